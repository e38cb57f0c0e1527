"""Work run in a process of its own, so that its peak RSS is its own.

    python -m envelope.bench.child rss SRC WORKDIR
        encrypt the file SRC to a file and decrypt it back (as `envelope encrypt|decrypt`
        does, no fsync), with a key file made here; print {"peak_mib", "baseline_mib"}

Peak RSS is VmHWM from /proc/self/status, not ru_maxrss: ru_maxrss survives exec and would
report the parent's peak. Off Linux, ru_maxrss is the fallback (an overestimate).
"""

from __future__ import annotations

import json
import os
import resource
import sys


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def rss(src: str, workdir: str) -> dict[str, float]:
    from envelope import sync
    from envelope.keyring import Keyring
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    key = os.path.join(workdir, "child.key")
    generate_key_file(key)
    backend = FileKeyBackend(key)
    keyring = Keyring(backend, backend.key_id)
    baseline = peak_rss_mib()
    enc, back = os.path.join(workdir, "child.env"), os.path.join(workdir, "child.out")
    sync.encrypt(src, enc, keyring=keyring, durable=False)
    sync.decrypt(enc, back, keyring=keyring, durable=False)
    for path in (enc, back, key):
        os.unlink(path)
    return {"peak_mib": peak_rss_mib(), "baseline_mib": baseline}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "rss":
        sys.stdout.write(json.dumps(rss(argv[1], argv[2])) + "\n")
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
