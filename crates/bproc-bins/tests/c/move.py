# A Python 3 program moves itself to a node through libbproc (ctypes) and back, keeping its
# pid and its variables. Exits 42 when all is well. Usage: move.py LIBBPROC NODE
import ctypes
import os
import sys

lib = ctypes.CDLL(sys.argv[1])
lib.bproc_lasterror.restype = ctypes.c_char_p
node = int(sys.argv[2])
squares = {i: i * i for i in range(100000)}
text = "gr\u00f6\u00dfe"
pid = os.getpid()
print(f"python {sys.version_info.major} on node {lib.bproc_currnode()}", flush=True)
for there in (node, -1):
    if lib.bproc_move(there) != 0:
        print(f"move to {there} failed: {lib.bproc_lasterror().decode()}", flush=True)
        sys.exit(1)
    whole = len(squares) == 100000 and squares[99999] == 99999 * 99999 and text == "gr\u00f6\u00dfe"
    print(
        f"on node {lib.bproc_currnode()}: pid {'same' if os.getpid() == pid else 'other'}, "
        f"variables {'whole' if whole else 'lost'}, {text}",
        flush=True,
    )
sys.exit(42)
