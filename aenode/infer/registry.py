"""The models this node runs: every valid package under ``[model] path``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from aenode.config import Config
from aenode.infer.engine import Model
from aenode.infer.manifest import MANIFEST_NAME, ManifestError
from aenode.logs import get_logger

log = get_logger("aenode.infer")


def package_dirs(path: str | Path) -> list[Path]:
    """The model packages at ``path``: the folder itself if it is one, else its sub-folders."""
    root = Path(path)
    if (root / MANIFEST_NAME).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


class ModelRegistry:
    """Loads each package once (sessions stay warm); a broken package is reported, not fatal."""

    def __init__(self, models: list[Model], failed: dict[str, str] | None = None):
        self.models = models
        self.failed = failed or {}

    @classmethod
    def from_config(cls, config: Config) -> ModelRegistry:
        return cls.load(config.model.path, providers=list(config.model.providers),
                        device_id=config.model.device_id, enabled=config.model.enabled)

    @classmethod
    def load(cls, path: str | Path, *, providers: list[str] | None = None, device_id: int = 0,
             enabled: list[str] | None = None) -> ModelRegistry:
        models: list[Model] = []
        failed: dict[str, str] = {}
        for pkg in package_dirs(path):
            try:
                model = Model(pkg, providers=providers, device_id=device_id)
            except ManifestError as exc:
                failed[pkg.name] = str(exc)
                log.error("model_package_refused", package=pkg.name, problem=str(exc))
                continue
            if enabled is not None and model.name not in enabled:
                continue
            if any(m.name == model.name for m in models):
                failed[pkg.name] = f"duplicate model name {model.name!r}"
                continue
            models.append(model)
        if enabled is not None:
            for name in enabled:
                if not any(m.name == name for m in models) and name not in failed:
                    failed[name] = f"enabled model {name!r} not found under {path}"
        return cls(models, failed)

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models)

    def warm_up(self) -> None:
        """One dummy run per model (logged with its time), so sessions are warm before work."""
        for model in self.models:
            model.warm_up()

    def __len__(self) -> int:
        return len(self.models)

    def get(self, name: str) -> Model:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
