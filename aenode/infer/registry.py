"""The models this node runs: every valid package under ``[model] path``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from aenode.config import Config
from aenode.infer.engine import Model
from aenode.infer.manifest import MANIFEST_NAME, ManifestError, load_manifest
from aenode.infer.promotions import Promotions
from aenode.logs import get_logger
from aenode.store.datadir import DataDir

log = get_logger("aenode.infer")


def package_dirs(path: str | Path) -> list[Path]:
    """The model packages at ``path``: the folder itself if it is one, else its sub-folders."""
    root = Path(path)
    if (root / MANIFEST_NAME).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """One package on disk (manifest read, ONNX not loaded), for choosing and listing."""

    name: str
    version: str
    package_dir: Path
    active: bool            # the version the node runs for this name


def installed_packages(path: str | Path, active_versions: Mapping[str, str] | None = None
                       ) -> tuple[list[InstalledPackage], dict[str, str]]:
    """Every readable package under ``path`` and which version of each name is active:
    the promoted one (``aenode models promote``) when installed, else the highest version.
    Returns (packages, refused package -> reason)."""
    found: list[tuple[str, str, Path]] = []
    failed: dict[str, str] = {}
    for pkg in package_dirs(path):
        try:
            m = load_manifest(pkg)
        except ManifestError as exc:
            failed[pkg.name] = str(exc)
            continue
        found.append((m.name, m.version, pkg))
    chosen: dict[str, tuple[str, Path]] = {}
    for name in {n for n, _, _ in found}:
        versions = [(v, p) for n, v, p in found if n == name]
        wanted = (active_versions or {}).get(name)
        match = [vp for vp in versions if vp[0] == wanted]
        chosen[name] = match[0] if match else max(versions, key=lambda vp: _version_key(vp[0]))
    out = [InstalledPackage(n, v, p, chosen[n] == (v, p)) for n, v, p in found]
    return sorted(out, key=lambda i: (i.name, _version_key(i.version))), failed


def active_versions(config: Config) -> dict[str, str]:
    """Promoted versions (``aenode models promote``); none until one was promoted, and
    reading never creates the database (``aenode predict`` leaves ``data_dir`` alone)."""
    if config.database.url is None and not DataDir.of(config.node.data_dir).models_db.exists():
        return {}
    promotions = Promotions.for_data_dir(config.node.data_dir, url=config.database.url)
    try:
        return promotions.active()
    finally:
        promotions.close()


class ModelRegistry:
    """Loads each package once (sessions stay warm); a broken package is reported, not fatal."""

    def __init__(self, models: list[Model], failed: dict[str, str] | None = None):
        self.models = models
        self.failed = failed or {}

    @classmethod
    def from_config(cls, config: Config) -> ModelRegistry:
        """The active version of every model not ``[models.NAME] mode = "off"``."""
        active = active_versions(config)
        off = [name for name, s in config.models.items() if s.mode == "off"]
        shadow_versions = [name for name, s in config.models.items() if "@" in name and s.mode == "shadow"]
        return cls.load(config.model.path, providers=list(config.model.providers),
                        device_id=config.model.device_id, enabled=config.model.enabled,
                        active_versions=active, off=off, shadow_versions=shadow_versions)

    @classmethod
    def load(cls, path: str | Path, *, providers: list[str] | None = None, device_id: int = 0,
             enabled: list[str] | None = None, active_versions: Mapping[str, str] | None = None,
             off: list[str] | None = None, shadow_versions: list[str] | None = None) -> ModelRegistry:
        """``shadow_versions``: "NAME@VERSION" of installed, not active versions to run as
        well, under that identifier (their results must not mix with the active version's)."""
        models: list[Model] = []
        installed, failed = installed_packages(path, active_versions)
        for name, why in failed.items():
            log.error("model_package_refused", package=name, problem=why)
        for ident in shadow_versions or []:
            name, _, version = ident.partition("@")
            inst = next((i for i in installed if i.name == name and i.version == version), None)
            if inst is None:
                failed[ident] = f"shadow version {ident!r} is not installed under {path}"
            elif not inst.active:
                try:
                    model = Model(inst.package_dir, providers=providers, device_id=device_id)
                except ManifestError as exc:
                    failed[ident] = str(exc)
                    continue
                # Its results, alerts and dashboard rows are keyed by this identifier.
                model.manifest = model.manifest.model_copy(update={"name": ident})
                models.append(model)
        for pkg in [i.package_dir for i in installed if i.active and i.name not in (off or [])]:
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
