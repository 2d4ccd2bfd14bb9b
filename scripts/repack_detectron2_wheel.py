"""Re-tag the checked sal-detectron2 wheel for any Python 3 and correct what its metadata says it needs.

    python scripts/repack_detectron2_wheel.py SOURCE.whl DEST.whl

The wheel (upstream Detectron2's pure-Python code; its compiled extension never loads) is published only as
`cp310`. Its metadata pins `numpy<2` (the code runs with numpy 2), requires `tensorboard` and `black` (used
only by optional writers and config formatting this project does not use) and omits `fvcore` and `iopath`
(which it imports). The repacked wheel is tagged `py3-none-any` and declares what it really needs, so that
any installer, MLflow's environment managers included, installs it with its dependencies. Only
`*.dist-info/WHEEL`, `METADATA` and `RECORD` change; every code file is copied byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile

DROP = ("numpy<2", "tensorboard", "black")
ADD = ("fvcore>=0.1.5", "iopath>=0.1.7")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(source: str, dest: str) -> None:
    with zipfile.ZipFile(source) as zin:
        files = {info.filename: zin.read(info) for info in zin.infolist()}
    dist_info = next(name.split("/")[0] for name in files if name.endswith(".dist-info/METADATA"))
    metadata = files[f"{dist_info}/METADATA"].decode().splitlines()
    kept = [line for line in metadata if line.removeprefix("Requires-Dist: ").strip() not in DROP]
    first_requirement = next(i for i, line in enumerate(kept) if line.startswith("Requires-Dist:"))
    kept[first_requirement:first_requirement] = [f"Requires-Dist: {r}" for r in ADD]
    files[f"{dist_info}/METADATA"] = ("\n".join(kept) + "\n").encode()
    wheel = files[f"{dist_info}/WHEEL"].decode().splitlines()
    files[f"{dist_info}/WHEEL"] = ("\n".join("Tag: py3-none-any" if line.startswith("Tag:") else line
                                             for line in wheel) + "\n").encode()
    record = f"{dist_info}/RECORD"
    lines = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items() if name != record]
    files[record] = ("\n".join(lines + [f"{record},,"]) + "\n").encode()
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 11, 29, 13, 46, 0))  # fixed: the same bytes every time
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)


if __name__ == "__main__":
    repack(sys.argv[1], sys.argv[2])
