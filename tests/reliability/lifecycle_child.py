"""A child that runs key-lifecycle operations on the embedded KMS until it is killed.

    python lifecycle_child.py HOME TAG SEED

Before each call it prints ``I <op> <key>`` (intent) and after the call returned ``A <op> <key>
[<blob hex> <plaintext hex>] <request id>`` (acknowledged), flushing each line, so the parent
knows exactly which calls were acknowledged when its SIGKILL landed, and which one (at most)
may have committed without an acknowledgement. Data keys come only from keys that are never
disabled or deleted, so every acknowledged data key must decrypt afterwards.
"""

from __future__ import annotations

import random
import sys

from envelope.service import RequestContext, open_service


def main(home: str, tag: str, seed: str) -> None:
    r = random.Random(seed)
    svc = open_service(home)
    data_keys: list[str] = []
    life_keys: list[str] = []
    out = sys.stdout
    n = 0

    def call(op: str, key: str, fn: object, **kw: object) -> dict[str, object]:
        nonlocal n
        n += 1
        rid = f"{tag}-{n}"
        out.write(f"I {op} {key} {rid}\n")
        out.flush()
        result: dict[str, object] = fn(context=RequestContext(request_id=rid), **kw)  # type: ignore[operator]
        return {"rid": rid, **result}

    def ack(*fields: str) -> None:
        out.write("A " + " ".join(fields) + "\n")
        out.flush()

    while True:
        if len(data_keys) < 2 or r.random() < 0.08:
            res = call("CreateKey", "-", svc.create_key, description=f"data {tag}")
            kid = res["KeyMetadata"]["KeyId"]  # type: ignore[index]
            data_keys.append(kid)
            ack("CreateKey", kid, "data", str(res["rid"]))
            continue
        if len(life_keys) < 2 or r.random() < 0.08:
            res = call("CreateKey", "-", svc.create_key, description=f"life {tag}")
            kid = res["KeyMetadata"]["KeyId"]  # type: ignore[index]
            life_keys.append(kid)
            ack("CreateKey", kid, "life", str(res["rid"]))
            continue
        x = r.random()
        if x < 0.5:
            kid = r.choice(data_keys)
            res = call(
                "GenerateDataKey",
                kid,
                svc.generate_data_key,
                key_id=kid,
                key_spec="AES_256",
                encryption_context={"tag": tag},
            )
            blob, pt = res["CiphertextBlob"], res["Plaintext"]
            ack("GenerateDataKey", kid, blob.hex(), pt.hex(), str(res["rid"]))  # type: ignore[attr-defined]
            continue
        kid = r.choice(life_keys)
        op, fn, kw = r.choice(
            [
                ("ScheduleKeyDeletion", svc.schedule_key_deletion, {"pending_window_in_days": 7}),
                ("CancelKeyDeletion", svc.cancel_key_deletion, {}),
                ("DisableKey", svc.disable_key, {}),
                ("EnableKey", svc.enable_key, {}),
            ]
        )
        try:
            res = call(op, kid, fn, key_id=kid, **kw)
        except Exception as e:  # a refusal in the key's current state is acknowledged too
            code = getattr(e, "code", type(e).__name__)
            ack(op, kid, f"refused:{code}", f"{tag}-{n}")
            continue
        ack(op, kid, "ok", str(res["rid"]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
