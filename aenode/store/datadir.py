"""Every file and folder the node keeps under ``[node] data_dir``, named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    """The layout of ``data_dir``; each stage's store opens only its own entry."""

    root: Path

    @classmethod
    def of(cls, root: str | Path) -> DataDir:
        return cls(Path(root).resolve())

    @property
    def spool(self) -> Path:            # store.spool: received instances
        return self.root / "spool"

    @property
    def index_db(self) -> Path:         # store.index: studies, series, instances, results
        return self.root / "index.sqlite"

    @property
    def results(self) -> Path:          # report: SR/SC files per study, model and revision
        return self.root / "results"

    @property
    def outbox_db(self) -> Path:        # deliver.outbox: everything that leaves the node
        return self.root / "outbox.sqlite"

    @property
    def alerts_db(self) -> Path:        # alert.store: alert decisions
        return self.root / "alerts.sqlite"

    @property
    def surveillance_db(self) -> Path:  # surveil: de-identified surveillance records, signals
        return self.root / "surveillance.sqlite"

    @property
    def models_db(self) -> Path:        # infer.promotions: active model version per name, promotion log
        return self.root / "models.sqlite"

    @property
    def export_secret(self) -> Path:    # export: the site's de-identification secret (mode 0600)
        return self.root / "export" / "site-secret"

    @property
    def reports(self) -> Path:          # evaluate: local validation reports (one folder each)
        return self.root / "reports"

    @property
    def latest_report(self) -> Path:    # evaluate -> web: which report the dashboard links
        return self.reports / "latest.json"

    @property
    def web_db(self) -> Path:           # web.store: users' sessions, acknowledgements, audit
        return self.root / "web.sqlite"

    @property
    def web_dir(self) -> Path:          # web: generated admin password and session secret
        return self.root / "web"

    def databases(self) -> dict[str, Path]:
        """Every database by store name (health checks, backups)."""
        return {"index": self.index_db, "outbox": self.outbox_db, "alerts": self.alerts_db,
                "surveillance": self.surveillance_db, "web": self.web_db,
                "model_versions": self.models_db}
