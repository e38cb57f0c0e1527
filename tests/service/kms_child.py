"""A child process for the durability tests: works on the store until it is killed.

It prints one line per *acknowledged* call (only after the call returned), flushing each:

    K <key id>                                  CreateKey returned
    D <key id> <blob hex> <plaintext hex> <rid> GenerateDataKey returned (request id rid)
"""

from __future__ import annotations

import sys
import uuid

from envelope.service import RequestContext, open_service


def main(home: str, tag: str) -> None:
    svc = open_service(home)
    keys: list[str] = []
    out = sys.stdout
    i = 0
    while True:
        i += 1
        if not keys or i % 7 == 0:
            kid = svc.create_key(description=f"child {tag}")["KeyMetadata"]["KeyId"]
            keys.append(kid)
            out.write(f"K {kid}\n")
        else:
            kid = keys[i % len(keys)]
            rid = f"{tag}-{uuid.uuid4()}"
            r = svc.generate_data_key(
                key_id=kid,
                key_spec="AES_256",
                encryption_context={"child": tag},
                context=RequestContext(request_id=rid),
            )
            out.write(f"D {kid} {r['CiphertextBlob'].hex()} {r['Plaintext'].hex()} {rid}\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
