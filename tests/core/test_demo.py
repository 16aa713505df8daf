"""The README's first command: `aenode demo` runs the whole node against real peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_shows_category_pacs_objects_image_and_alert(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # The phantom's full chest (320 mm), as the README runs it: a study covering half the
    # chest lies outside the reference model's training domain and gets no category.
    r = subprocess.run([sys.executable, "-m", "aenode", "demo", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout
    assert "model covid-typicality: category typical" in text, text
    assert "SR series 'AI RESULT - NOT FOR DIAGNOSTIC USE'" in text
    assert "OT series 'AI RESULT - NOT FOR DIAGNOSTIC USE - KEY IMAGES'" in text
    assert '"category": "typical"' in text and '"channel": "webhook"' in text
    png = out / "secondary_capture.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Patient data goes to the alert (patient ID, by design) but never into the node's log.
    log = (out / "node.log").read_text()
    assert "PH-TYP-" not in log and "PHANTOM^" not in log
