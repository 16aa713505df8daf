"""The study page shows a shadow model's result to admins only, beside the active model's
and the radiologist's, with agreement figures; viewers and the JSON API never see it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from aenode.store.index import Index
from aenode.web.store import WebStore
from tests.web.conftest import MODEL, PROBS, hashes, login, open_app, web_env  # noqa: F401

SHADOW = "covid-typicality-next"


def test_shadow_result_for_admins_only(web_env):  # noqa: F811
    index = Index.for_data_dir(web_env.data_dir)
    index.record_result(web_env.study_uid, 1, SHADOW, "typical", dict(PROBS), selected_series=web_env.series_uid,
                        detail={"version": "2.0.0", "mode": "shadow", "result_uids": []})
    index.close()
    store = WebStore.for_data_dir(web_env.data_dir)
    store.confirm(study_uid=web_env.study_uid, model=MODEL, revision=1, ai_category="typical", category="typical",
                  infection_status="pcr-positive", radiologist_id="R1", user="rada", role="radiologist", note=None)
    store.close()
    with open_app(web_env.config) as app:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            login(c, "ines")
            page = c.get(f"/studies/{web_env.study_uid}").text
            assert f'id="shadow-{SHADOW}"' in page and "not sent to PACS, no alerts" in page
            row = page.split(f'id="shadow-{SHADOW}"')[1].split("</tr>")[0]
            assert row.count("1 of 1") == 2          # agrees with the radiologist and with the active model
            assert f'id="result-{SHADOW}"' not in page   # never shown as a result of its own
        with TestClient(app, base_url="http://127.0.0.1") as c:
            login(c, "vera")
            page = c.get(f"/studies/{web_env.study_uid}").text
            assert 'id="shadow"' not in page and SHADOW not in page
            api = c.get(f"/api/studies/{web_env.study_uid}").json()
            assert SHADOW not in str(api)
            assert SHADOW not in str(c.get("/api/studies").json())


def test_dashboard_links_the_latest_validation_report(web_env, tmp_path):  # noqa: F811
    from aenode.evaluate.metrics import Case, split, summarise
    from aenode.evaluate.report import publish_report, write_report

    classes = ["typical", "indeterminate", "atypical", "negative"]
    cases = [Case(str(i), c, c if i % 3 else "negative", {c: 0.7, "negative": 0.3}, scanner_model="S",
                  slice_thickness_mm=2.5) for i, c in enumerate(classes * 3)]
    doc = summarise(cases, classes) | {"model": MODEL, "version": "1.0.0", "missing": 0, "unlabelled": 0,
                                       "seconds_per_study": 1.0, "split": split(cases, classes)}
    files = write_report(tmp_path / "report", doc, cases)
    published = publish_report(web_env.data_dir, files, doc)
    with open_app(web_env.config) as app:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            login(c, "ines")
            assert 'id="validation-report-link"' in c.get("/alerts").text
            r = c.get("/reports/latest", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == f"/reports/{published.name}/report.html"
            page = c.get(r.headers["location"])
            assert page.status_code == 200 and "Local validation of covid-typicality" in page.text
            png = c.get(f"/reports/{published.name}/confusion.png")
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
            assert c.get(f"/reports/{published.name}/..%2F..%2Fweb.sqlite").status_code == 404
            assert c.get("/reports/..%2Fweb/report.html").status_code == 404
        with TestClient(app, base_url="http://127.0.0.1") as c:
            login(c, "vera")
            assert 'id="validation-report-link"' not in c.get("/alerts").text
            assert c.get(f"/reports/{published.name}/report.html", follow_redirects=False).status_code in (302, 303, 403)
