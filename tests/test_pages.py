"""The HTML pages (src/pages): the explorer of an embeddings table and the index of a package, checked
as files (data, links, escaping) and in a real browser (Debian's Chromium through Selenium and its
system chromedriver; skipped, with the reason, where either is missing)."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

import vjepa2_embeddings
import vjepa2_pipeline
from src import cli
from src.embeddings_table import Pooling, TableWriter, build_rows
from src.package import write_package
from src.pages import write_explorer
from src.pages.html import json_script
from src.pages.layout import LAYOUT_FILE

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "<img src=x onerror=alert(1)>.png"
HOSTILE_LABEL = "<script>alert(2)</script>"
FRAMES, WINDOW, DIM = 32, 8, 16


# --------------------------------------------------------------------------- data


def make_sources(root: Path) -> tuple[list[Path], list[Path]]:
    """Two short MP4s (a moving white line on red / on blue) and an image folder with a hostile name."""
    videos = []
    for name, tint in (("walk.mp4", (200, 60, 60)), ("ride.mp4", (60, 60, 200))):
        frames = np.zeros((FRAMES, 48, 64, 3), np.uint8) + np.array(tint, np.uint8)
        for t in range(FRAMES):
            frames[t, :, (2 * t) % 64] = 255
        iio.imwrite(root / name, frames, fps=8, codec="libx264")
        videos.append((root / name).resolve())
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("cat.png", "dog.png", HOSTILE):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / name)
    return videos, sorted(p.resolve() for p in images.iterdir())


def add_rows(table: Path, videos: list[Path], images: list[Path], seed: int = 1) -> None:
    """One row per window of 8 frames (vectors around one centre per video) and per image."""
    rng = np.random.default_rng(seed)
    with TableWriter(table, part_rows=4) as writer:
        for video in videos:
            centre = rng.standard_normal(DIM)
            for w in range(FRAMES // WINDOW):
                ids = list(range(w * WINDOW, (w + 1) * WINDOW))
                meta = {"grid": [1, 1, 1], "video_path": str(video), "source_type": "video", "window_idx": w,
                        "start_frame": ids[0], "end_frame": ids[-1], "frame_numbers": ids, "fps": 8.0,
                        "timestamps": [i / 8 for i in ids], "model": "synthetic"}
                vector = (centre + 0.3 * rng.standard_normal(DIM)).astype(np.float32)
                writer.add(build_rows(torch.from_numpy(vector)[None], {}, meta, Pooling()))
        for image in images:
            meta = {"grid": [1, 1, 1], "source": str(image), "source_type": "image", "model": "synthetic"}
            vector = rng.standard_normal(DIM).astype(np.float32)
            writer.add(build_rows(torch.from_numpy(vector)[None], {}, meta, Pooling()))


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    """A table of two videos' windows and an image folder, labels from a CSV, and its explorer page."""
    root = tmp_path_factory.mktemp("explore")
    videos, images = make_sources(root)
    add_rows(root / "table", videos, images)
    labels = root / "labels.csv"
    labels.write_text(f"path,label\n{videos[0]},walking\n{videos[1]},riding\n{root / 'images' / 'cat.png'},cat\n"
                      f"\"{root / 'images' / HOSTILE}\",{HOSTILE_LABEL}\n")
    page = root / "out" / "explorer.html"
    code = cli.run(vjepa2_embeddings.main, ["explore", "--table_dir", str(root / "table"), "--output", str(page),
                                            "--labels", str(labels), "-k", "5"])
    assert code == cli.EXIT_OK
    return root, page, videos, images


def page_data(page: Path) -> dict:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page.read_text(), re.S)
    return json.loads(found.group(1))


def column(data: dict, name: str) -> np.ndarray:
    packed = data["columns"][name]
    return np.frombuffer(base64.b64decode(packed["b64"]), np.dtype("<" + packed["dtype"]))


def table_vectors(table: Path) -> tuple[list[str], np.ndarray]:
    rows = ds.dataset(sorted(str(p) for p in table.glob("part-*.parquet")), format="parquet").to_table()
    return rows.column("row_id").to_pylist(), np.stack(rows.column("vector").to_numpy(zero_copy_only=False))


# --------------------------------------------------------------------------- the page as a file


def test_json_script_cannot_be_ended_by_its_data():
    hostile = {"name": "</script><img src=x onerror=alert(1)>", "amp": "a&b", "line": "\u2028"}
    element = json_script(hostile, "d")
    inner = element.removeprefix('<script type="application/json" id="d">').removesuffix("</script>")
    assert "<" not in inner and ">" not in inner and "&" not in inner
    assert json.loads(inner) == hostile


def test_explorer_holds_every_row_source_and_label_and_nothing_remote(explored):
    root, page, videos, images = explored
    text = page.read_text()
    data = page_data(page)
    assert data["shown"] == data["table_rows"] == 2 * FRAMES // WINDOW + 3 == 11
    assert {s["path"] for s in data["sources"]} == {str(p) for p in videos + images}
    assert data["labels"] == sorted(["walking", "riding", "cat", HOSTILE_LABEL])
    assert data["labelled"] == 2 * FRAMES // WINDOW + 2 and data["color_by"] == "label"
    assert data["thumbnails"] == 11 and all(t.startswith("data:image/jpeg;base64,") for t in data["thumbs"])
    # no resource is requested from a host, and the hostile name and label are never markup
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<img src=x" not in text and "<script>alert" not in text
    # links to the sources are relative from the page's folder and percent-encoded
    hostile = next(s for s in data["sources"] if s["path"].endswith(HOSTILE))
    assert hostile["href"] == "./../images/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"
    assert all((page.parent / s["href"].replace("%3C", "<").replace("%20", " ").replace("%3D", "=")
                .replace("%28", "(").replace("%29", ")").replace("%3E", ">")).exists() for s in data["sources"])
    # time spans and frame numbers of the windows, from the table
    windows = column(data, "window")
    assert sorted(windows.tolist()) == [-1, -1, -1, 0, 0, 1, 1, 2, 2, 3, 3]
    f0, f1, t0 = column(data, "f0"), column(data, "f1"), column(data, "t0")
    for w, a, b, t in zip(windows, f0, f1, t0):
        if w >= 0:
            assert (a, b, t) == (w * WINDOW, w * WINDOW + WINDOW - 1, w * WINDOW / 8)


def test_neighbours_are_the_exact_cosine_ranking(explored):
    root, page, _, _ = explored
    data = page_data(page)
    _, vectors = table_vectors(root / "table")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    k = data["k"]
    assert k == 5
    nbr, sim = column(data, "nbr").reshape(-1, k), column(data, "sim").reshape(-1, k).astype(np.float64)
    for i in range(len(vectors)):
        expected = sorted((j for j in range(len(vectors)) if j != i), key=lambda j: (-sims[i, j], j))[:k]
        assert nbr[i].tolist() == expected
        np.testing.assert_allclose(sim[i] * 2 / data["sim_steps"] - 1, sims[i, expected], atol=2e-5)


def test_map_is_reused_while_the_table_is_unchanged(explored, tmp_path):
    root, _, videos, images = explored
    table = tmp_path / "table"
    shutil.copytree(root / "table", table)
    (table / LAYOUT_FILE).unlink(missing_ok=True)
    first = write_explorer(table, tmp_path / "a.html", thumbnails=False)
    second = write_explorer(table, tmp_path / "b.html", thumbnails=False)
    assert (first.layout_reused, second.layout_reused) == (False, True)
    assert column(page_data(tmp_path / "a.html"), "x").tolist() == column(page_data(tmp_path / "b.html"), "x").tolist()
    add_rows(table, videos[:1], [], seed=5)  # more rows: a new map
    third = write_explorer(table, tmp_path / "c.html", thumbnails=False)
    assert not third.layout_reused and third.rows_shown == 11 + FRAMES // WINDOW
    assert page_data(tmp_path / "c.html")["thumbnails"] == 0


def test_max_points_samples_rows_and_neighbours_stay_on_the_page(explored, tmp_path):
    root, _, _, _ = explored
    summary = write_explorer(root / "table", tmp_path / "few.html", max_points=6, max_thumbnails=2, neighbors=3)
    data = page_data(tmp_path / "few.html")
    assert (summary.rows_shown, summary.table_rows, data["shown"], data["thumbnails"]) == (6, 11, 6, 2)
    nbr = column(data, "nbr").reshape(6, 3)
    assert ((nbr >= 0) & (nbr < 6)).all() and all(i not in row for i, row in enumerate(nbr.tolist()))
    assert (column(data, "thumb") >= 0).sum() == 2


def test_explore_refuses_label_colours_without_labels(explored, tmp_path, capsys):
    root, _, _, _ = explored
    code = cli.run(vjepa2_embeddings.main, ["explore", "--table_dir", str(root / "table"), "--output",
                                            str(tmp_path / "x.html"), "--color_by", "label"])
    assert code == cli.EXIT_USAGE and "needs a labels CSV" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


# --------------------------------------------------------------------------- index pages as files


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A real pipeline run (random weights) on the example frames: its package and zip."""
    out = tmp_path_factory.mktemp("pipe") / "run"
    code = cli.run(vjepa2_pipeline.main, [
        "--frame_dir", str(REPO / "examples" / "frames"), "--output_dir", str(out), "--model", "random:tiny",
        "--img_size", "64", "--device", "cpu", "--num_workers", "0", "--umap_visualization", "--original_images",
        "--video_animation", "--video_stacked_visualization", "--mp4"])
    assert code == cli.EXIT_OK
    return out


def local_links(page: Path) -> list[str]:
    data = page_data(page)
    return [f["href"] for f in data["files"]] + list(data["hrefs"].values()) + [v["href"] for v in data["videos"]]


def test_package_index_links_every_file_and_is_in_the_zip(package):
    index = package / "package" / "index.html"
    meta = json.loads((package / "package" / "metadata.json").read_text())
    data = page_data(index)
    packaged = {f["name"] for f in meta["files"]}
    assert "index.html" in packaged
    assert {f["name"] for f in data["files"]} == packaged - {"index.html"} | {"metadata.json"}
    assert "videos/stacked.mp4" in {v["name"] for v in data["videos"]}
    assert data["settings"]["model"] == "random:tiny"
    assert len(data["windows"]) == 2
    for w, window in enumerate(data["windows"]):  # 16 source frames beside 8 token pictures, 2 per row
        originals, overlays = window["columns"][0], window["columns"][1]
        assert (originals["folder"], originals["per_row"], overlays["folder"]) == ("original frames", 2, "umap_overlay")
        assert originals["pictures"] == [f"original/frame_{i:06d}.png" for i in range(16 * w + 1, 16 * w + 17)]
        assert overlays["pictures"] == [f"umap_overlay/window_{w:05d}_t{t:02d}.png" for t in range(8)]
    from urllib.parse import unquote

    assert all(href.startswith("./") and (index.parent / unquote(href)).is_file() for href in local_links(index))
    with zipfile.ZipFile(package / "run_package.zip") as zf:
        assert set(zf.namelist()) == packaged | {"metadata.json"}
        assert zf.read("index.html") == index.read_bytes()


def test_visualize_embeddings_writes_an_index_of_its_folder(package, tmp_path):
    import visualize_embeddings

    out = tmp_path / "pics"
    code = cli.run(visualize_embeddings.main, [str(package / "features"), "--output_dir", str(out), "--method", "pca",
                                               "--no_overlay"])
    assert code == cli.EXIT_OK
    data = page_data(out / "index.html")
    assert data["settings"]["method"] == "pca"
    assert [w["window"] for w in data["windows"]] == ["window_00000", "window_00001"]
    assert {f["name"] for f in data["files"]} == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                                   if p.is_file() and p.name != "index.html"}
    assert len(data["hrefs"]) == 16  # 2 windows x 8 temporal tokens


def test_index_shows_hostile_names_as_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(src / "p.png")
    meta = {"model": HOSTILE_LABEL, "flags": {"note": "</script><b>x</b>"}}
    write_package(tmp_path / "package", {f"umap_overlay/window_00000_{HOSTILE}": src / "p.png"}, meta)
    text = (tmp_path / "package" / "index.html").read_text()
    assert "<img src=x" not in text and "<script>alert" not in text and "</script><b>" not in text
    assert page_data(tmp_path / "package" / "index.html")["settings"]["flags"]["note"] == "</script><b>x</b>"


# --------------------------------------------------------------------------- in a browser


def _chromium() -> tuple[str | None, str | None]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary, driver = _chromium()
    if binary is None or driver is None:
        pytest.skip("Chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def open_page(browser, page: Path) -> None:
    browser.get(page.as_uri())
    browser.get_log("browser")  # nothing from an earlier page


def console_errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def hover_row(browser, i: int):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = browser.find_element(By.ID, "map")
    x, y = browser.execute_script("return window.explorer.screenPosition(arguments[0])", i)
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(canvas, round(x - size["width"] / 2),
                                                      round(y - size["height"] / 2)).perform()
    return browser.find_element(By.ID, "tooltip")


def test_explorer_in_chromium_draws_every_row_and_hovers(browser, explored):
    _, page, _, _ = explored
    browser.get(page.as_uri())
    assert console_errors(browser) == []
    body = browser.execute_script("return [document.body.dataset.rows, document.body.dataset.pointsDrawn]")
    assert body == ["11", "11"]
    assert "11 of 11 rows" in browser.find_element("id", "title").text
    names = browser.execute_script("return Array.from({length: 11}, (_, i) => window.explorer.rowName(i))")
    ids, _ = table_vectors(explored[0] / "table")
    assert names == ids
    for i in (0, 5):
        tooltip = hover_row(browser, i)
        assert tooltip.get_attribute("data-row") == str(i) and tooltip.is_displayed()
        assert f"path: {ids[i]}" in tooltip.text and "frames:" in tooltip.text
        assert tooltip.find_element("tag name", "img").get_attribute("src").startswith("data:image/jpeg")
    requested = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(("file:", "data:")) for url in requested), requested  # nothing from a host
    shot = Image.open(io.BytesIO(browser.find_element("id", "map").screenshot_as_png)).convert("RGB")
    colours = np.unique(np.asarray(shot).reshape(-1, 3), axis=0)
    assert len(colours) > 4  # points in several label colours on the white map, not a blank canvas
    assert console_errors(browser) == []


def test_hostile_name_and_label_stay_text_in_chromium(browser, explored):
    from selenium.common.exceptions import NoAlertPresentException

    _, page, _, images = explored
    open_page(browser, page)
    hostile = browser.execute_script(
        "return Array.from({length: 11}, (_, i) => window.explorer.rowName(i))"
        ".findIndex(n => n.endsWith(arguments[0]))",
        HOSTILE)
    tooltip = hover_row(browser, hostile)
    assert HOSTILE in tooltip.text and HOSTILE_LABEL in tooltip.text
    browser.execute_script("window.explorer.select(arguments[0])", hostile)
    search = browser.find_element("id", "search")
    search.send_keys("onerror")
    assert browser.find_element("id", "matches").get_attribute("data-count") == "1"
    assert HOSTILE_LABEL in browser.find_element("id", "legend").text
    injected = browser.execute_script(
        "return [document.querySelectorAll('img[src=\"x\"]').length, document.scripts.length,"
        " Array.from(document.querySelectorAll('b')).length]")
    assert injected == [0, 2, 0]  # the data element and the page's own script; nothing injected
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert console_errors(browser) == []


def test_click_lists_the_nearest_rows(browser, explored):
    _, page, _, _ = explored
    open_page(browser, page)
    data = page_data(page)
    tooltip = hover_row(browser, 3)
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).click().perform()
    selection = browser.find_element("id", "selection")
    assert selection.get_attribute("data-row") == "3"
    shown = [int(e.get_attribute("data-row")) for e in selection.find_elements("css selector", ".neighbour")]
    assert shown == column(data, "nbr").reshape(-1, data["k"])[3].tolist()
    links = selection.find_elements("css selector", "a.source-link")
    assert links and links[0].get_attribute("href").startswith("file://") and "#t=" in links[0].get_attribute("href")
    assert tooltip.get_attribute("data-row") == "3"


def test_package_index_in_chromium_shows_video_and_pictures(browser, package):
    index = package / "package" / "index.html"
    open_page(browser, index)
    state = browser.execute_script("""
        const videos = Array.from(document.querySelectorAll('video'));
        return new Promise(done => {
          const check = () => {
            const imgs = Array.from(document.images);
            if (imgs.every(i => i.complete) && videos.every(v => v.readyState >= 1)) {
              done([videos.map(v => v.videoWidth > 0), imgs.length, imgs.filter(i => i.naturalWidth > 0).length]);
            } else setTimeout(check, 50);
          };
          check();
        });""")
    pngs = [h for h in local_links(index) if h.endswith(".png")]
    assert state[0] == [True] * len(page_data(index)["videos"]) and state[0]
    assert state[1] == state[2] == len(set(pngs))
    assert console_errors(browser) == []
