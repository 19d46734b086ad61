"""`edge-bloodcls adapt` on a tiny model: a colour-shifted synthetic "site" is learned, the bundle
carries its site section and runs in the runtime, bad inputs are refused or skipped, and a run
stopped part-way leaves no bundle behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

from conftest import make_dataset, synthetic_cell  # noqa: E402

from edge_bloodcls.adapt.data import AdaptInputError, load_labelled, source_fields  # noqa: E402
from edge_bloodcls.cli import main  # noqa: E402
from edge_bloodcls.edge_runtime.core.bundle import load_bundle, sha256_file  # noqa: E402
from edge_bloodcls.edge_runtime.core.classifier import Classifier  # noqa: E402
from edge_bloodcls.edge_runtime.core.preprocess import normalise, resize  # noqa: E402
from edge_bloodcls.edge_runtime.core.spec import LABELS, InputSpec  # noqa: E402
from edge_bloodcls.edge_runtime.lab.session import CellRecord, SessionLog  # noqa: E402
from edge_bloodcls.edge_runtime.lab.store import SessionStore  # noqa: E402
from edge_bloodcls.train.data import make_split, read_split, scan, write_split  # noqa: E402
from edge_bloodcls.train.pipeline import load_pixels  # noqa: E402

SIZE = 32
SITE_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
FAST = ["--steps", "150", "--lr", "3e-3"]


def _tiny_model():
    """The training head of archs.build (nested backbone, pool, dropout, probs) on a two-conv
    backbone, so adapt's cut, AdaBN and export paths run in seconds."""
    inp = tf_keras.Input((SIZE, SIZE, 3))
    h = tf_keras.layers.Conv2D(8, 3, strides=2, name="stem")(inp)
    h = tf_keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(h)
    h = tf_keras.layers.ReLU(name="stem_relu")(h)
    h = tf_keras.layers.Conv2D(16, 3, name="conv")(h)
    h = tf_keras.layers.BatchNormalization(momentum=0.9, name="conv_bn")(h)
    h = tf_keras.layers.ReLU(name="out_relu")(h)
    backbone = tf_keras.Model(inp, h, name="backbone")
    x = tf_keras.Input((SIZE, SIZE, 3), name="image")
    f = tf_keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    f = tf_keras.layers.Dropout(0.1, name="dropout")(f)
    return tf_keras.Model(x, tf_keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(f), name="tiny")


def _shift(im):
    """The new microscope: another stain and camera, here a strong colour cast."""
    a = np.asarray(im).astype(np.float32)
    return np.clip(a[..., [2, 0, 1]] * [0.8, 1.1, 1.0] + [30, 0, -20], 0, 255).astype(np.uint8)


def _site(root, per_class, seed, one_basophil=False):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in SITE_CLASSES + (("basophil",) if one_basophil else ()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for j in range(1 if label == "basophil" else per_class):
            Image.fromarray(_shift(synthetic_cell(LABELS.index(label), rng, 64))).save(root / label / f"c{j}.png")
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    cells = make_dataset(d / "pbc", n_per_class=16, size=64)
    rows, report = make_split(scan(cells), (0.5, 0.25, 0.25), seed=0)
    digest = write_split(rows, report, d / "split.csv", cells)
    spec = InputSpec.named(SIZE)
    paths, y = read_split(d / "split.csv").items("train")
    tf_keras.utils.set_random_seed(0)
    model = _tiny_model()
    model.compile(tf_keras.optimizers.Adam(5e-3), "sparse_categorical_crossentropy")
    model.fit(normalise(load_pixels(paths, spec.size), spec), y, epochs=40, batch_size=16, verbose=0)
    run = d / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps(
            {
                "arch": "tiny",
                "input": spec.to_json(),
                "labels": list(LABELS),
                "split": {"csv": str(d / "split.csv"), "sha256": digest},
            }
        )
    )
    return d


def _adapt(base, labelled, out, *extra):
    return CliRunner().invoke(
        main,
        [
            "adapt",
            "--labelled",
            str(labelled),
            "--model",
            str(base / "run" / "model.keras"),
            "--split",
            str(base / "split.csv"),
            "--out",
            str(out),
            *FAST,
            *extra,
        ],
    )


def _accuracy(clf, root):
    right = n = 0
    for label in SITE_CLASSES:
        for f in sorted((root / label).glob("*.png")):
            right += clf.classify(str(f)).label == label
            n += 1
    return right / n


@pytest.fixture(scope="module")
def adapted(base, tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    labelled = _site(d / "labelled", 4, seed=1, one_basophil=True)
    (labelled / "neutrophil" / "broken.jpg").write_bytes(b"not an image")
    more = _site(d / "more", 2, seed=4)  # a second --labelled source, merged
    validate = _site(d / "validate", 3, seed=5)
    unlabelled = _site(d / "unlabelled", 4, seed=3)
    res = _adapt(
        base,
        labelled,
        d / "out",
        "--labelled",
        str(more),
        "--validate",
        str(validate),
        "--unlabelled",
        str(unlabelled),
        "--prior",
        "em",
    )
    return d, labelled, res


def test_site_learned_and_bundle_complete(base, adapted):
    d, labelled, res = adapted
    lines = res.output.strip().splitlines()
    # One unreadable file: skipped with one line, counted, exit 1; the bundle is still written.
    assert res.exit_code == 1, res.output
    assert sum(line.startswith("skipped ") and "broken.jpg" in line for line in lines) == 1
    assert "1 unreadable input(s) skipped" in res.output
    assert "validation (held out, int8, as capture crops them): accuracy" in res.output
    bundle = load_bundle(lines[-1])
    site = bundle.manifest["site"]
    # Both sources are merged; the class with one image is adapted on like the others.
    assert site["adapted_on"]["counts"] == {
        "basophil": 1,
        "eosinophil": 6,
        "lymphocyte": 6,
        "monocyte": 6,
        "neutrophil": 6,
    }
    assert [s["counts"]["neutrophil"] for s in site["adapted_on"]["sources"]] == [4, 2]
    for f in site["adapted_on"]["files"]:
        assert f["sha256"] == sha256_file(f["name"])
    # The held-out cells: scored through the int8 bundle, never trained on, with intervals.
    v = site["validation"]
    assert v["n"] == 12 and v["per_class"]["neutrophil"]["n"] == 3
    assert v["accuracy_ci"][0] <= v["accuracy"] <= v["accuracy_ci"][1]
    assert not {f["sha256"] for f in site["adapted_on"]["files"]} & {sha256_file(p) for p in validate_files(d)}
    assert site["base_model"]["sha256"] == sha256_file(base / "run" / "model.keras")
    t = site["pbc_test"]
    assert 0 <= t["accuracy_int8"] <= 1 and 0 <= t["accuracy_base_float"] <= 1 and t["n"] > 0
    # --home route (the default): home cells go to the base network, the site's to the fine-tuned
    # one; the router is checked on cells it was not fitted on, and home keeps the base's answers.
    route = site["route"]
    assert route["checks"]["pbc_val"]["routed_right"] >= 0.9
    assert route["checks"]["validate"]["cells"] == 12 and route["checks"]["validate"]["routed_right"] >= 0.9
    assert t["accuracy_int8"] >= t["accuracy_base_float"] - 0.1, t
    # The cell-feature head (on by default): fitted on the labelled cells' classes, its own router
    # checked on cells it was not fitted on; the bundle carries it and the runtime fuses with it.
    head = site["cell_head"]
    assert head["classes"] == ["basophil", *SITE_CLASSES] and bundle.head is not None
    assert head["checks"]["pbc_test"]["routed_right"] >= 0.9 and head["checks"]["validate"]["cells"] == 12
    assert bundle.manifest["cell_head"]["fitted_on"]["labelled"]["neutrophil"] == 6
    assert bundle.manifest["schema"] == 2  # a runtime that would ignore the head refuses the bundle
    assert site["validation_float_network_alone"]["n"] == site["validation_float"]["n"] == 12
    # Two networks and the router (a weight per pooled feature, 16, and a bias) in one bundle.
    n_base = tf_keras.models.load_model(base / "run" / "model.keras", compile=False).count_params()
    assert bundle.manifest["params"] == 2 * n_base + 16 + 1
    # --prior em: the site's class proportions estimated from the unlabelled crops (no basophil,
    # erythroblast, ig or platelet there) and built into the output layer.
    prior = site["prior"]["site_em"]
    assert abs(sum(prior.values()) - 1) < 1e-3 and prior["platelet"] < prior["neutrophil"]
    assert bundle.quantization.startswith("int8") and bundle.trust is not None
    # The review threshold is the site's: refitted with the held-out cells' probabilities.
    fit = bundle.manifest["trust"]["site_fit"]
    assert bundle.manifest["trust"]["review_threshold"] == fit["review_threshold"] <= 1.0
    assert fit["by_set"]["local_out_of_fold"]["n"] == 12 and "convert_fit" in fit
    assert {"ood_local_unlabelled", "ood_validate_held_out", "ood_foreign_synthetic"} <= set(site["checks"])

    held_out = _site(d / "held_out", 8, seed=2)
    adapted_acc = _accuracy(Classifier(bundle), held_out)
    assert adapted_acc >= 0.6, adapted_acc  # chance is 1/8 over the model's labels, 1/4 over these

    listing = CliRunner().invoke(main, ["models", "--dir", str(d / "out")])
    assert listing.exit_code == 0 and bundle.name in listing.output and "site-adapted on 25 cells" in listing.output
    assert "held-out" in listing.output and "PBC test" in listing.output and "(base " in listing.output
    assert "routed (base network for home cells)" in listing.output and "with a cell-feature head" in listing.output


def validate_files(d):
    return sorted((d / "validate").rglob("*.png"))


def test_no_cell_head_gives_the_network_alone(base, tmp_path):
    labelled = _site(tmp_path / "labelled", 3, seed=1)
    res = _adapt(base, labelled, tmp_path / "out", "--no-cell-head", "--steps", "20")
    assert res.exit_code == 0, res.output
    bundle = load_bundle(res.output.strip().splitlines()[-1])
    assert bundle.head is None and bundle.manifest["site"]["cell_head"] is None
    assert bundle.manifest["schema"] == 1 and "cell-feature head" not in res.output


def test_a_cell_both_trained_on_and_validating_is_refused(base, tmp_path):
    labelled = _site(tmp_path / "labelled", 2, seed=1)
    res = _adapt(base, labelled, tmp_path / "out", "--validate", str(labelled))
    assert res.exit_code == 2 and "error:" in res.output and "--validate" in res.output
    assert "Traceback" not in res.output


def test_labels_not_in_model_refused(base, tmp_path):
    labelled = _site(tmp_path / "labelled", 2, seed=1)
    (labelled / "macrophage").mkdir()
    res = _adapt(base, labelled, tmp_path / "out")
    assert res.exit_code == 2
    assert "error:" in res.output and "macrophage" in res.output and "not labels of the model" in res.output
    assert not (tmp_path / "out").exists()


def test_empty_folder_is_a_clear_error(base, tmp_path):
    (tmp_path / "labelled").mkdir()
    res = _adapt(base, tmp_path / "labelled", tmp_path / "out")
    assert res.exit_code == 2 and "error:" in res.output and "no class folders" in res.output
    (tmp_path / "labelled" / "neutrophil").mkdir()
    res = _adapt(base, tmp_path / "labelled", tmp_path / "out")
    assert res.exit_code == 2 and "no readable labelled cells" in res.output
    assert "Traceback" not in res.output


def test_stopped_adapt_leaves_no_bundle(base, tmp_path, monkeypatch):
    """Stopped after convert has staged a complete bundle but before it is moved into OUTDIR."""
    import edge_bloodcls.edge_runtime.core.classifier as classifier

    def killed(*a, **k):
        raise KeyboardInterrupt

    labelled = _site(tmp_path / "labelled", 3, seed=1)
    out = tmp_path / "out"
    monkeypatch.setattr(classifier.Classifier, "__init__", killed)
    res = _adapt(base, labelled, out)
    assert res.exit_code != 0
    assert list(out.rglob("*")) == []  # nothing: no manifest, no model, no staging folder
    # A stale staging folder (SIGKILL gives no chance to clean up) is never listed as a bundle.
    (out / ".adapt-x" / "bundle").mkdir(parents=True)
    (out / ".adapt-x" / "bundle" / "m.json").write_text("{}")
    listing = CliRunner().invoke(main, ["models", "--dir", str(out)])
    assert "no usable bundle" in listing.output


def test_session_log_reviewed_cells(tmp_path):
    """A capture log: reviewed cells with a crop are read; unreviewed ones are not."""
    import io

    db = tmp_path / "s.db"
    rng = np.random.default_rng(0)
    log = SessionLog(db, "x", "cell", {}, 0.5)
    for i, lab in enumerate(["ig", "monocyte", "lymphocyte", "ig"]):
        buf = io.BytesIO()
        synthetic_cell(LABELS.index(lab), rng).save(buf, "JPEG")
        log.log_frame(
            i,
            0.0,
            f"f{i}",
            (9, 9),
            1,
            [
                CellRecord(
                    (0, 0, 9, 9),
                    lab,
                    0.5,
                    True,
                    {lab: 1.0},
                    crop_path=f"crops/s1_f{i:06d}_t{i}_{lab}.jpg",
                    crop_jpeg=buf.getvalue() if i < 3 else None,
                )
            ],
        )
    log.close()
    with SessionStore(db) as store:  # reviewed: 1 and 3 (and 4, whose crop was not stored); 2 not
        for cid, label in [(1, "neutrophil"), (3, "lymphocyte"), (4, "neutrophil")]:
            store.decide(log.id, cid, label, "ann", 0)
    lines = []
    cells = load_labelled(db, list(LABELS), lines.append)
    assert [LABELS[c] for c in cells.labels] == ["neutrophil", "lymphocyte"]
    assert lines == [f"skipped {db}#cell4: no crop stored (capture ran without crops)"]
    assert resize(cells.images[0], (8, 8)).shape == (8, 8, 3)
    # As a --validate source, the fields of its reviewed cells (frames f0, f2, f3; not f1) and the
    # crops capture saved of them stay out of the unlabelled crops, as a folder's crops FIELD_N.jpg
    # name their fields.
    assert source_fields(db) == {"f0", "f2", "f3", "s1_f000000_t0_ig", "s1_f000002_t2_lymphocyte", "s1_f000003_t3_ig"}
    (tmp_path / "crops" / "eosinophil").mkdir(parents=True)
    (tmp_path / "crops" / "eosinophil" / "BloodImage_00008_1.jpg").write_bytes(b"")
    assert source_fields(tmp_path / "crops") == {"BloodImage_00008"}
    with pytest.raises(AdaptInputError, match="not SQLite"):
        (tmp_path / "x.db").write_bytes(b"junk" * 10)
        load_labelled(tmp_path / "x.db", list(LABELS))
    with pytest.raises(AdaptInputError, match="not SQLite"):
        source_fields(tmp_path / "x.db")


def test_reframe_tight_matches_capture_framing():
    from edge_bloodcls.adapt.data import reframe_tight

    cell = np.zeros((50, 40, 3), np.uint8)
    cell[0] = cell[-1] = cell[:, 0] = cell[:, -1] = (200, 180, 190)
    out = reframe_tight(cell, rbc_px=30)
    assert out.shape == (117, 117, 3)  # 3.9 red cells: wider than 1.4 x the box (70)
    assert tuple(out[0, 0]) == (200, 180, 190)


def test_paste_puts_the_cell_in_a_local_neighbourhood():
    from edge_bloodcls.adapt.data import paste

    cell = np.full((50, 40, 3), 90, np.uint8)
    bg = np.full((140, 140, 3), 220, np.uint8)
    out = paste(cell, 30, [(bg, 30)], np.random.default_rng(0))
    assert out.shape == (117, 117, 3)  # capture's side, as reframe_tight
    assert tuple(out[58, 58]) == (90, 90, 90) and tuple(out[0, 0]) == (220, 220, 220)
    # Only backgrounds whose own cell the box covers are used; a larger one is the fallback.
    out = paste(cell, 30, [(bg, 80), (bg // 2, 30)], np.random.default_rng(0))
    assert tuple(out[0, 0]) == (110, 110, 110)


def test_training_options_reach_the_fine_tune(tmp_path, monkeypatch):
    """--transfer, --average, --site-share and --batch are the fine-tune's (FinetuneConfig transfer,
    average, local_share, batch), --no-cell-head the options';
    the run itself is replaced: what is checked is the CLI's mapping, not training."""
    import edge_bloodcls.adapt.run as run
    from edge_bloodcls.adapt.finetune import FinetuneConfig

    seen = {}

    def fake_adapt(opts, log=print):
        seen.update(opts.ft, cell_head=opts.cell_head)
        return {"bundle": "b.tflite", "skipped": 0}

    monkeypatch.setattr(run, "adapt", fake_adapt)
    labelled = _site(tmp_path / "labelled", 1, seed=1)
    args = ["adapt", "--labelled", str(labelled), "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(main, [*args, "--transfer", "0.5", "--site-share", "0.75", "--average", "0.25"])
    assert res.exit_code == 0, res.output
    assert seen["transfer"] == 0.5 and seen["local_share"] == 0.75 and seen["average"] == 0.25
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and seen["transfer"] == 0.0 and seen["local_share"] == 0.5
    assert seen["average"] == FinetuneConfig().average and seen["cell_head"] is True
    assert seen["batch"] == 16  # the measured default (docs/adapt.md, seventh round)
    res = CliRunner().invoke(main, [*args, "--batch", "32"])
    assert res.exit_code == 0 and seen["batch"] == 32
    res = CliRunner().invoke(main, [*args, "--no-cell-head"])
    assert res.exit_code == 0 and seen["cell_head"] is False
    res = CliRunner().invoke(main, [*args, "--site-share", "0"])  # a batch with no site cell trains nothing
    assert res.exit_code == 2 and "--site-share" in res.output
