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
