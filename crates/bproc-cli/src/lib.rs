//! shared code of the client tools: bpstat and bpctl logic, formats, errors
