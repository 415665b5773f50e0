"""Real STAC items (CMR-STAC HLS, Earth Search v1, Planetary Computer S2 / S1 / DEM) parse into
Scenes, and each profile resolves the right asset for each band; static catalogs and the STAC
API apply the same filters."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import box

from conftest import REAL, needs_shared
from eochips.config import CloudCover, SearchConfig
from eochips.errors import NoScenesError, ProfileError
from eochips.profiles import PROFILES, get_profile
from eochips.search import scene_from_item, search

pytestmark = needs_shared
ITEMS = REAL / "stac_items"
JUNE_JULY = "2021-06-01/2021-07-31"  # the 4 real Exeter dates (the fixture API also holds derived Aug-Sep items)


def _items(name):
    doc = json.loads((ITEMS / name).read_text())
    return doc["features"] if isinstance(doc, dict) and "features" in doc else (doc if isinstance(doc, list) else [doc])


def test_cmr_stac_hls_items():
    items = _items("pystacclient__cmrstac_HLSL30.v1.5_sample-item-collection.json")
    scenes = [scene_from_item(it) for it in items]
    assert len(scenes) == 10 and all(s.cloud_cover is not None for s in scenes)
    s = scenes[0]
    assert s.id == "G1994512890-LPCLOUD" and s.date == "2021-01-01" and s.cloud_cover == 17
    p = PROFILES["hls-l30"]
    # L30: narrow NIR is B05, SWIR B06/B07 (HLS user guide); the CMR items carry those keys
    for band, key in {"blue": "B02", "nir08": "B05", "swir16": "B06", "swir22": "B07"}.items():
        assert p.asset_key(band) == key and s.assets[key].endswith(f".{key}.tif")
    assert s.assets["Fmask"].endswith(".Fmask.tif")
    assert PROFILES["hls-s30"].asset_key("nir08") == "B8A" and PROFILES["hls-s30"].asset_key("swir16") == "B11"
    assert PROFILES["hls-s30"].tile_of("HLS.S30.T13RCN.2024128T173909.v2.0", {}) == "13RCN"


def test_earth_search_s2_items():
    scenes = [scene_from_item(it) for it in _items("pystacclient__earthsearch_v1_sentinel-2-l2a_extracted.json")]
    p = get_profile("sentinel-2-l2a-earthsearch")
    for s in scenes:
        for band in ("blue", "green", "red", "nir", "nir08", "swir16", "swir22"):
            assert p.asset_key(band) in s.assets and s.assets[p.asset_key(band)].endswith(".tif")
        assert p.qa.asset in s.assets and s.assets["scl"].endswith("SCL.tif")
    s = scenes[0]
    assert s.properties["s2:processing_baseline"] == "05.11" and p.offset_dn(s.properties) == -1000
    assert [p.tile_of(x.id, x.properties) for x in scenes[:3]] == ["20EPT", "24MUV", "24MVV"]


def test_planetary_computer_items():
    s2 = [scene_from_item(it) for it in _items("stacgeoparquet__sentinel-2-l2a-pc.json")]
    p = get_profile("sentinel-2-l2a-pc")
    for s in s2:
        assert s.assets[p.asset_key("nir08")].split("?")[0].endswith("_B8A_20m.tif")
        assert s.assets[p.asset_key("red")].split("?")[0].endswith("_B04_10m.tif")
        assert s.assets[p.qa.asset].split("?")[0].endswith("_SCL_20m.tif")
        assert p.tile_of(s.id, s.properties) == s.properties["s2:mgrs_tile"]
    assert p.offset_dn(s2[0].properties) == -1000  # baseline 05.10
    old = [scene_from_item(it) for it in _items("odcstac__site2-2020_jun_jul-35MNM.geojson")]
    assert len(old) == 13 and all(p.offset_dn(s.properties) == 0 for s in old)  # baseline 02.12
    s1 = [scene_from_item(it) for it in _items("stacgeoparquet__sentinel-1-rtc-pc.json")]
    for s in s1:
        assert get_profile("sentinel-1-rtc").asset_key("vv") in s.assets and "vh" in s.assets
    dem = [scene_from_item(it) for it in _items("stacgeoparquet__cop-dem-glo-30-pc.json")]
    assert all(s.assets[get_profile("cop-dem-glo-30").asset_key("elevation")].endswith("_DEM.tif") for s in dem)


def test_unknown_band_and_profile_messages():
    with pytest.raises(ProfileError, match="band 'nir08' is not in profile 'sentinel-1-rtc'; valid bands: vh, vv"):
        get_profile("sentinel-1-rtc").asset_key("nir08")
    with pytest.raises(ProfileError, match="unknown profile 'hls'"):
        get_profile("hls")


def test_static_catalog_filters(tmp_path):
    path = ITEMS / "odcstac__site2-2020_jun_jul-35MNM.geojson"
    scenes = [scene_from_item(it) for it in _items(path.name)]
    aoi = scenes[0].geometry.buffer(-0.01)
    cfg = SearchConfig(catalog=str(path), collections=["sentinel-2-l2a"], datetime="2020-06-01/2020-06-30",
                       cloud_cover=CloudCover(max=10))
    got = search(cfg, aoi)
    want = sorted((s for s in scenes if s.datetime.month == 6 and s.cloud_cover <= 10 and s.geometry.intersects(aoi)),
                  key=lambda s: (s.datetime, s.id))
    assert [s.id for s in got] == [s.id for s in want] and len(got) > 0
    with pytest.raises(NoScenesError, match="search found no scenes"):
        search(cfg.model_copy(update={"datetime": "2019-01-01/2019-01-31"}), aoi)


def _ids(cfg, aoi):
    try:
        return [s.id for s in search(cfg, aoi)]
    except NoScenesError:
        return []


def test_api_and_static_catalog_agree(stac_api, hls_dir, tmp_path):
    _, items = hls_dir
    static = tmp_path / "items.json"
    static.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    aoi = box(-3.55, 50.70, -3.47, 50.74)
    for cc in (CloudCover(), CloudCover(max=12), CloudCover(min=30, max=80), CloudCover(max=5)):
        api = _ids(SearchConfig(catalog=stac_api, collections=["HLSS30_2.0"], cloud_cover=cc, datetime=JUNE_JULY), aoi)
        st = _ids(SearchConfig(catalog=str(static), collections=["HLSS30_2.0"], cloud_cover=cc, datetime=JUNE_JULY), aoi)
        assert api == st
    cheap = search(SearchConfig(catalog=stac_api, collections=["HLSS30_2.0"], cloud_cover=CloudCover(max=12)), aoi)  # any date
    assert [s.date for s in cheap] == ["2021-06-13", "2021-07-18"]  # 11.9 % and 10.4 % cloud + shadow
    assert _ids(SearchConfig(catalog=stac_api, collections=["HLSS30_2.0"], cloud_cover=CloudCover(min=30, max=80), datetime=JUNE_JULY), aoi) == [
        it["id"] for it in sorted(items, key=lambda i: i["properties"]["datetime"]) if 30 <= it["properties"]["eo:cloud_cover"] <= 80
    ]


def test_api_paging(stac_api):
    aoi = box(-3.55, 50.70, -3.47, 50.74)
    one = search(SearchConfig(catalog=stac_api, collections=["HLSS30_2.0"], page_size=1, datetime=JUNE_JULY), aoi)
    assert len(one) == 4 and [s.date for s in one] == ["2021-06-08", "2021-06-13", "2021-06-23", "2021-07-18"]
    assert len(search(SearchConfig(catalog=stac_api, collections=["HLSS30_2.0"], page_size=1, max_items=2), aoi)) == 2
    assert len(search(SearchConfig(catalog=stac_api, collections=["HLSS30_2.0"], page_size=3), aoi)) == 10  # + 6 derived


def test_not_a_stac_api(cog_server):
    from eochips.errors import CatalogError

    with pytest.raises(CatalogError, match="is not a reachable STAC API"):
        search(SearchConfig(catalog=cog_server.url + "/nothing-here", collections=["x"]), box(0, 0, 1, 1))


def test_earthdata_token_sources(tmp_path, monkeypatch):
    from eochips.search import earthdata_token, gdal_auth_env, redact

    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine urs.earthdata.nasa.gov login someone password tok-from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert earthdata_token() == "tok-from-netrc"
    monkeypatch.setenv("EARTHDATA_TOKEN", "tok-from-env")
    assert gdal_auth_env("earthdata") == {"GDAL_HTTP_HEADERS": "Authorization: Bearer tok-from-env"}
    assert gdal_auth_env("none") == {}
    signed = "https://x.blob.core.windows.net/c/a.tif?st=2024&se=2025&sp=rl&sig=SECRETSIG%3D"
    assert "SECRETSIG" not in redact(signed) and redact(signed).startswith("https://x.blob.core.windows.net/c/a.tif?")


def test_stac_geoparquet_static_catalog(tmp_path):
    pytest.importorskip("stac_geoparquet")
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow as sga

    items = _items("odcstac__site2-2020_jun_jul-35MNM.geojson")
    path = tmp_path / "items.parquet"
    pq.write_table(sga.parse_stac_items_to_arrow(items).read_all(), path)
    scenes = [scene_from_item(it) for it in items]
    aoi = scenes[0].geometry.buffer(-0.01)
    for cfg in (SearchConfig(catalog=str(path), collections=["sentinel-2-l2a"], cloud_cover=CloudCover(max=1)),
                SearchConfig(catalog=str(path), collections=["sentinel-2-l2a"], datetime="2020-07-01/2020-07-31")):
        from_json = search(cfg.model_copy(update={"catalog": str(ITEMS / "odcstac__site2-2020_jun_jul-35MNM.geojson")}), aoi)
        assert [s.id for s in search(cfg, aoi)] == [s.id for s in from_json] and from_json


def test_cql2_filter_sort_and_max_items_agree_on_api_and_static(stac_api, hls_dir, tmp_path):
    """One filter semantics (D8): a CQL2 filter, a descending sort and a max_items cut give the
    same scenes from the pgstac API (filter and sort sent to the server) and from a static copy
    of its items (evaluated with cql2 on the client), and both equal the rule applied by hand."""
    _, items = hls_dir
    static = tmp_path / "items.json"
    static.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    aoi = box(-3.55, 50.70, -3.47, 50.74)
    flt = "\"eo:cloud_cover\" < 60 AND datetime >= TIMESTAMP('2021-06-10T00:00:00Z')"
    by_hand = sorted((it for it in items if it["properties"]["eo:cloud_cover"] < 60 and it["properties"]["datetime"] >= "2021-06-10"),
                     key=lambda it: -it["properties"]["eo:cloud_cover"])
    assert len(by_hand) >= 2 and len(by_hand) < len(items)
    for max_items in (None, 2):
        want = [it["id"] for it in by_hand[:max_items]]
        for catalog in (stac_api, str(static)):
            cfg = SearchConfig(catalog=catalog, collections=["HLSS30_2.0"], datetime=JUNE_JULY, filter=flt,
                               sortby=["-properties.eo:cloud_cover"], max_items=max_items)
            assert [s.id for s in search(cfg, aoi)] == want, (catalog, max_items)
    # a property the items lack: no match anywhere (SQL's NULL), not an error
    for catalog in (stac_api, str(static)):
        with pytest.raises(NoScenesError):
            search(SearchConfig(catalog=catalog, collections=["HLSS30_2.0"], filter="\"s2:nodata_pixel_percentage\" <= 20"), aoi)


def test_scene_is_frozen_hashable_and_picklable():
    """D10: a Scene held dicts, so it was neither hashable nor truly frozen."""
    import pickle

    s = scene_from_item(_items("stacgeoparquet__sentinel-2-l2a-pc.json")[0])
    assert {s: 1}[s] == 1 and hash(s) == hash(pickle.loads(pickle.dumps(s)))
    with pytest.raises(TypeError):
        s.assets["B02"] = "elsewhere"
    with pytest.raises(TypeError):
        s.properties["eo:cloud_cover"] = 0
    assert json.loads(json.dumps(s.to_item()))["properties"]["eo:cloud_cover"] == s.cloud_cover
    assert s.asset_fields["B02"]["proj:shape"] == (10980, 10980)
