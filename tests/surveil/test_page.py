"""The ``/surveillance`` page and ``/api/surveillance`` over a known batch: who may see
them, the numbers they show, no patient data; and the page in headless Debian chromium
(screenshot to ``docs/surveillance.png`` with ``AENODE_UPDATE_SURVEILLANCE_SCREENSHOT=1``)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from aenode.node import running_node
from aenode.peers import wait_for
from aenode.store.index import Index
from aenode.surveil.store import SurveillanceStore
from aenode.surveil.worker import SurveillanceWorker
from tests.surveil.helpers import ACCESSION, CANARY_BIRTH, CANARY_ID, CANARY_NAME, MODEL, add_study, batch, config
from tests.web.conftest import free_port, hashes, login, open_app, web_section  # noqa: F401 - hashes: fixture
from tests.web.test_e2e import _driver, _login, web_worker

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "surveillance.png"
CANARIES = (CANARY_NAME, "CANARY", CANARY_ID, CANARY_BIRTH, ACCESSION)


def seeded(tmp_path, hashes):  # noqa: F811 - the fixture's value
    cfg = config(tmp_path / "data", web=web_section(hashes), node={"data_dir": str(tmp_path / "data"),
                                                                    "name": "surveil-node", "port": free_port()})
    index = Index.for_data_dir(cfg.node.data_dir)
    uids = [add_study(index, cfg.node.data_dir, c) for c in batch()]
    w = SurveillanceWorker(cfg, index)
    w.run_once()
    w.store.record_confirmation(uids[-4], MODEL, "indeterminate", "pcr-positive", "JP-RAD-1")
    w.close()
    index.close()
    return cfg, uids


def test_page_and_api(tmp_path, hashes):  # noqa: F811
    from fastapi.testclient import TestClient

    cfg, uids = seeded(tmp_path, hashes)
    with open_app(cfg) as app, TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/surveillance", follow_redirects=False).status_code == 303      # sign in first
        assert login(c, "vera").status_code == 303
        assert c.get("/surveillance").status_code == 403                               # viewer: no
        c.cookies.clear()
        login(c, "ines")
        page = c.get("/surveillance")
        assert page.status_code == 200
        html = page.text
        assert "41 CT studies, 1 confirmed" in html
        assert len(re.findall(r'<rect class="bar"', html)) >= 12 + 1                   # 12 weeks + histogram
        assert re.search(r"<td>2024-W12</td><td>EARS C2</td><td>6</td>", html)
        assert 'class="signal-mark"' in html
        api = c.get("/api/surveillance?by=week").json()
        assert [b["period"] for b in api["buckets"]][-1] == "2024-W12" and api["total"] == 41
        assert api["buckets"][-1]["by_category"] == {"typical": 4, "indeterminate": 2, "atypical": 1,
                                                     "negative": 1}
        assert [(s["week"], s["count"]) for s in api["signals"]] == [("2024-W12", 6)]
        day = c.get("/api/surveillance?by=day&from=2024-03-18&until=2024-03-22").json()
        assert day["total"] == 8 and [b["period"] for b in day["buckets"]][0] == "2024-03-18"
        assert c.get("/api/surveillance?from=18-03-2024").status_code == 422
        for text in (html, str(api), str(day)):
            for canary in CANARIES:
                assert canary not in text
            assert not any(u in text for u in uids)


def test_confirmation_on_dashboard_updates_record(tmp_path, hashes):  # noqa: F811
    """The web stage's confirm action tells the surveillance store (agreed contract)."""
    from fastapi.testclient import TestClient

    from tests.web.conftest import session_csrf

    cfg, uids = seeded(tmp_path, hashes)
    with open_app(cfg) as app, TestClient(app, base_url="http://127.0.0.1") as c:
        login(c, "rada")
        csrf = session_csrf(c)
        r = c.post(f"/api/studies/{uids[-1]}/confirm", headers={"X-CSRF-Token": csrf},
                   json={"model": MODEL, "category": "negative", "infection_status": "pcr-negative",
                         "radiologist_id": "JP-RAD-77"})
        assert r.status_code == 200, r.text
    with SurveillanceStore.for_data_dir(cfg.node.data_dir) as st:
        got = [x for x in st.records() if x.radiologist_id == "JP-RAD-77"]
        assert len(got) == 1 and got[0].confirmed_category == "negative" and got[0].infection_status == "pcr-negative"


def test_page_in_chromium(tmp_path, hashes):  # noqa: F811
    from selenium.webdriver.common.by import By

    cfg, _ = seeded(tmp_path, hashes)
    driver = _driver(tmp_path / "chromium-profile")
    with contextlib.ExitStack() as stack:
        stack.callback(driver.quit)
        node = stack.enter_context(running_node(cfg, workers=("web",)))
        base = web_worker(node).url
        _login(driver, base, "ines")
        driver.get(f"{base}/surveillance")
        assert wait_for(lambda: driver.find_elements(By.ID, "epi-curve"), 10)
        bars = driver.find_elements(By.CSS_SELECTOR, "#epi-curve rect.bar")
        assert len(bars) >= 12 and all(b.is_displayed() for b in bars)
        assert "2024-W12" in driver.find_element(By.ID, "signals").text
        assert driver.find_element(By.CSS_SELECTOR, "nav a.on").text == "Surveillance"
        assert CANARY_NAME not in driver.page_source
        out = SCREENSHOT if os.environ.get("AENODE_UPDATE_SURVEILLANCE_SCREENSHOT") == "1" \
            else tmp_path / "surveillance.png"
        assert driver.save_screenshot(str(out)) and out.stat().st_size > 10_000
