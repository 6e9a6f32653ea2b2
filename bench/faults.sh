#!/usr/bin/env bash
# The counted fault suite (slave kills, hung nodes, link cuts between network namespaces,
# master restarts) on virtual clusters; prints a markdown table. Needs root; takes about
# six minutes. FAULTS="kills hangs cut3 cut10 cut70 restarts" picks scenarios.
#
#   bench/faults.sh
#   FAULTS="hangs restarts" bench/faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p bproc-bins
exec python3 bench/faults.py "$PWD/target/release"
