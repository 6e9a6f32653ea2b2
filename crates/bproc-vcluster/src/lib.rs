//! bpcluster: a master and N slaves on one machine
