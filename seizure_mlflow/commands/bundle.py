"""``bundle``: a registered model and every wheel it needs, in one folder, for servers with no network."""

from __future__ import annotations

from seizure_mlflow.commands.requests import BundleRequest


def run_command(request: BundleRequest) -> int:
    from seizure_mlflow.registry.bundle import write_bundle

    out = write_bundle(request.model_uri, request.output, torch=request.torch)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"Bundle in {out} ({size / 2**30:.1f} GiB): install and serve offline with `bash {out}/install.sh --serve`")
    return 0
