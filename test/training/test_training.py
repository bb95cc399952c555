"""Offline training: GSV-Cities data against the reference golden, freezing, a short CPU training
run (loss falls, recall rises), export / Lightning checkpoint -> load_model, the installed
``vpr_ros.training`` entry points, DDP on CPU, and clear data errors."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl  # noqa: E402
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from vpr_ros.evaluation.datasets import load_dataset  # noqa: E402
from vpr_ros.models import VPRModel, load_model  # noqa: E402
from vpr_ros.preprocess import preprocess_exact  # noqa: E402
from vpr_ros.synth.gsv import make_gsv_dataset, make_val_views, skimage_photos  # noqa: E402
from vpr_ros.training.__main__ import main as cli_main  # noqa: E402
from vpr_ros.training.export import export_lightning_checkpoint, load_config  # noqa: E402
from vpr_ros.training.gsv import GSVCitiesDataModule, GSVCitiesDataset, read_cities  # noqa: E402
from vpr_ros.training.module import VPRLightningModule  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "test" / "data" / "golden" / "salad" / "gsv_dataset.json"
TINY = REPO / "config" / "train_tiny.yaml"


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), value % 256, np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture()
def golden_root(tmp_path: Path, golden: dict) -> Path:
    for rel, text in golden["csv_files"].items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    for i, img in enumerate(golden["images"]):
        _jpeg(tmp_path / img["relative_path"], 7 * i)
    return tmp_path


# -- GSV-Cities data ----------------------------------------------------------------------------


def test_dataset_matches_reference_golden(golden_root: Path, golden: dict) -> None:
    tables = read_cities(golden_root, golden["cities"])
    ds = GSVCitiesDataset(golden_root, tables, golden["img_per_place"], golden["min_img_per_place"], seed=(0, 0))
    assert len(ds) == golden["num_places"]
    assert sorted(ds.place_ids) == golden["place_ids"]
    assert ds.total_images == golden["total_nb_images"]
    want = defaultdict(list)
    for img in golden["images"]:
        want[img["place_id"]].append(img["relative_path"])
    assert {pid: sorted(rows) for pid, rows in ds.places} == {pid: sorted(v) for pid, v in want.items()}
    # cities stay in list order (Boston before PRS, whose ids carry the +100000 offset)
    assert [pid >= 100_000 for pid in ds.place_ids] == sorted(pid >= 100_000 for pid in ds.place_ids)

    for i in range(len(ds)):
        images, labels = ds[i]
        assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32
        assert labels.tolist() == [ds.place_ids[i]] * 4
        picked = [p.relative_to(golden_root).as_posix() for p in ds.sample_paths(i)]
        assert len(set(picked)) == 4 and set(picked) <= set(want[ds.place_ids[i]])


def test_place_order_reshuffles_per_epoch_but_agrees_across_ranks(golden_root: Path, golden: dict) -> None:
    tables = read_cities(golden_root, golden["cities"])
    orders = {e: GSVCitiesDataset(golden_root, tables, seed=(0, e)).place_ids for e in range(6)}
    assert GSVCitiesDataset(golden_root, tables, seed=(0, 3)).place_ids == orders[3]  # same on every rank
    assert len({tuple(o) for o in orders.values()}) > 1  # new order across epochs


def test_datamodule_batches_keep_places_together(golden_root: Path, golden: dict) -> None:
    dm = GSVCitiesDataModule(str(golden_root), golden["cities"], batch_size=4, num_workers=0, val_sets=[])
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b[0]) for b in batches] == [4, 4, 1]  # drop_last off
    images, labels = batches[0]
    assert images.shape == (4, 4, 3, 224, 224)
    flat = labels.flatten()
    assert flat.tolist() == [pid for pid in labels[:, 0].tolist() for _ in range(4)]  # consecutive per place


def test_bad_root_and_malformed_csv_fail_clearly(tmp_path: Path, golden_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory\n.*Dataframes/<City>\.csv"):
        read_cities(tmp_path / "nowhere", ["Boston"])
    with pytest.raises(FileNotFoundError, match=r"Dataframes/Tokyo\.csv.*\n.*place_id"):
        read_cities(golden_root, ["Boston", "Tokyo"])
    with pytest.raises(ValueError, match="data.root"):
        GSVCitiesDataModule(None, val_sets=[]).setup("fit")

    path = golden_root / "Dataframes" / "Boston.csv"
    rows = list(csv.reader(path.open()))
    bad = golden_root / "Dataframes" / "Bad.csv"
    with bad.open("w", newline="") as f:
        csv.writer(f).writerows([[c for c in r[:7]] for r in rows])  # no panoid column
    with pytest.raises(ValueError, match=r"Bad\.csv: missing column\(s\) \['panoid'\]; expected columns"):
        read_cities(golden_root, ["Bad"])
    rows[2][0] = "13O"  # letter O instead of a zero
    with bad.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=r"Bad\.csv, line 3: place_id must be an integer, got '13O'"):
        read_cities(golden_root, ["Bad"])


def test_unreadable_image_is_black_and_logged(golden_root: Path, golden: dict, caplog) -> None:
    ds = GSVCitiesDataset(golden_root, read_cities(golden_root, golden["cities"]), seed=(0, 0))
    victim = ds.sample_paths(0)[0]
    victim.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING, logger="vpr_ros.training.gsv"):
        images, _ = ds[0]
    assert ds.unreadable == 1 and str(victim) in caplog.text
    assert ds.load(victim).getextrema() == ((0, 0),) * 3


# -- model: freezing and optimiser ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You are trying to `self.log:UserWarning")  # steps called by hand
def test_vitb_layout_freezes_all_but_last_four_blocks() -> None:
    # dino_salad's depth-12 layout at a small width (the freezing rule does not depend on width)
    m = VPRLightningModule("dino_salad", backbone={"embed_dim": 64, "num_heads": 4, "img_size": 56},
                           aggregator={"num_clusters": 4, "cluster_dim": 8, "token_dim": 8})
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert all(n.startswith("model.") for n in trainable | frozen)  # the module only wraps a VPRModel
    blocks = {int(n.split(".")[4]) for n in trainable if ".blocks." in n}
    assert blocks == {8, 9, 10, 11}
    assert {"model.backbone.model.norm.weight", "model.aggregator.dust_bin"} <= trainable
    assert all(n.startswith("model.aggregator.") for n in trainable
               if not n.startswith(("model.backbone.model.blocks.", "model.backbone.model.norm.")))
    for name in ("cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.7.mlp.fc2.bias"):
        assert f"model.backbone.model.{name}" in frozen
    # the backbone freezes itself: a bare VPRModel of the same config has the same split
    bare = {f"model.{n}" for n, p in VPRModel(m.model_config).named_parameters() if not p.requires_grad}
    assert bare == frozen

    batch = torch.randn(2, 4, 3, 56, 56), torch.tensor([[1] * 4, [2] * 4])
    m.training_step(batch, 0).backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in m.named_parameters() if n in frozen)

    opt = m.configure_optimizers()
    assert {id(p) for g in opt["optimizer"].param_groups for p in g["params"]} == {
        id(p) for p in m.parameters() if p.requires_grad}
    assert opt["lr_scheduler"]["interval"] == "step" and opt["optimizer"].param_groups[0]["lr"] == 6e-5


@pytest.mark.filterwarnings("ignore:You are trying to `self.log:UserWarning")  # steps called by hand
def test_from_scratch_trains_embeddings_and_needs_every_block() -> None:
    kw = {"backbone": {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 56},
          "aggregator": {"num_clusters": 4, "cluster_dim": 8, "token_dim": 8}}
    m = VPRLightningModule(**kw, num_trainable_blocks=2, train_embeddings=True)
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen == ["model.backbone.model.mask_token"]
    m.training_step((torch.randn(2, 4, 3, 56, 56), torch.tensor([[1] * 4, [2] * 4])), 0).backward()
    vit = m.model.backbone.model
    assert vit.patch_embed.proj.weight.grad is not None and vit.pos_embed.grad is not None
    with pytest.raises(ValueError, match="train_embeddings needs every block trainable"):
        VPRLightningModule(**kw, num_trainable_blocks=1, train_embeddings=True)
    with pytest.raises(ValueError, match="unknown aggregator option"):
        VPRLightningModule(aggregator={"clusters": 4})


def test_a2gc_registry_model_builds() -> None:
    m = VPRLightningModule("a2gc_vitb14", backbone={"embed_dim": 64, "num_heads": 4, "img_size": 56})
    assert m.model_config.arch == "a2gc" and m.model.aggregator.cfg.num_channels == 64
    assert m.model.aggregator.cluster_geo.requires_grad and m(torch.randn(1, 3, 56, 56)).shape == (1, 8448)


TINY_MODULE = {"backbone": {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 56},
               "aggregator": {"num_clusters": 4, "cluster_dim": 8, "token_dim": 8}, "num_trainable_blocks": 1}


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_lightning_checkpoint_loads_with_load_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = VPRLightningModule(**TINY_MODULE)
    places = TensorDataset(torch.randn(4, 4, 3, 56, 56), torch.arange(4).repeat_interleave(4).reshape(4, 4))
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(places, batch_size=2))
    ckpt = tmp_path / "module.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=True)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert saved.keys() == {f"model.{k}" for k in VPRModel(module.model_config).state_dict()}

    images = torch.randn(3, 3, 56, 56)
    model = load_model(ckpt, config=load_config(module.model_config))
    with torch.no_grad():
        want = module.eval()(images)
        torch.testing.assert_close(model(images), want, atol=0, rtol=0)
    # a checkpoint of the earlier module (weights not under model.) still restores
    old = tmp_path / "old_layout.ckpt"
    torch.save({**torch.load(ckpt, weights_only=True), "state_dict": {k.removeprefix("model."): v
                                                                      for k, v in saved.items()}}, old)
    with torch.no_grad():
        restored = VPRLightningModule.load_from_checkpoint(old, weights_only=True).eval()
        torch.testing.assert_close(restored(images), want, atol=0, rtol=0)


def test_installed_entry_point_runs_outside_the_checkout(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vpr_ros.training", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fit" in proc.stdout


class _Records(logging.Handler):
    """Records of one logger, taken before propagation (Lightning's own loggers may not propagate)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.logger, self.records = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.logger.addHandler(self)
        return self.records

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


def _own_argv() -> object:
    """sys.argv as the installed command would have it: LightningCLI warns when it sees pytest's
    arguments next to the ``args`` a test passes."""
    from unittest import mock

    return mock.patch.object(sys, "argv", ["vpr-ros-train"])


def test_logger_follows_default_root_dir_and_lightning_stays_quiet(tmp_path: Path) -> None:
    from vpr_ros.training.__main__ import TrainingCLI, quiet_lightning

    quiet_lightning()
    with _Records("pytorch_lightning.utilities.rank_zero") as messages, _own_argv():
        cli = TrainingCLI(VPRLightningModule, GSVCitiesDataModule, run=False,
                          args=["--config", str(TINY), "--trainer.default_root_dir", str(tmp_path / "run")])
    assert Path(cli.trainer.logger.log_dir) == tmp_path / "run" / "logs" / "version_0"
    assert any("GPU available" in m for m in messages) and not any("litlogger" in m for m in messages)

    from pytorch_lightning.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        _tree_flatten(torch.ones(1))  # Lightning's own use of torch's deprecated LeafSpec
        assert any("LeafSpec" in str(w.message) for w in caught)
        caught.clear()
        quiet_lightning()
        _tree_flatten(torch.ones(1))
        assert not caught


def test_first_run_says_it_generates_its_data_and_where(tmp_path: Path) -> None:
    dm = GSVCitiesDataModule(root=str(tmp_path / "gsv"), val_root=str(tmp_path / "val"),
                             synthetic={"source": "scenes", "places_per_photo": 1, "image_size": 32})
    with _Records("pytorch_lightning.utilities.rank_zero") as messages:
        dm.prepare_data()
        dm.prepare_data()  # the second time the data is there: nothing to say
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{tmp_path / 'gsv'} has no Dataframes/: generating a synthetic GSV-Cities")
    assert f"validation views into {tmp_path / 'val'} from the scenes photos" in messages[0]
    assert (tmp_path / "gsv" / "Dataframes").is_dir() and (tmp_path / "val" / "SPED").is_dir()


# -- a short training run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth")
    photos = [img for _, img in skimage_photos()]
    make_gsv_dataset(photos, root / "gsv", image_size=112)
    make_val_views(photos, root / "val", image_size=112)
    return root / "gsv", root / "val"


def _cli_args(out: Path, gsv: Path, val: Path) -> list[str]:
    return ["--config", str(TINY), "--data.root", str(gsv), "--data.val_root", str(val),
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"]


def _metric_rows(log_dir: Path) -> list[dict[str, str]]:
    with (log_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("run")
    gsv, val = out / "data" / "gsv", out / "data" / "val"  # written by the config's data.synthetic
    with _own_argv():
        untrained = cli_main(["validate", *_cli_args(out / "untrained", gsv, val)])
        assert (gsv / "Dataframes" / "Synthtown.csv").is_file() and (val / "SPED").is_dir()
        cli = cli_main(["fit", *_cli_args(out / "fit", gsv, val)])
    rows = _metric_rows(Path(cli.trainer.logger.log_dir))
    return {
        "cli": cli,
        "r1_untrained": float(untrained.trainer.callback_metrics["sped/R1"]),
        "r1": [float(r["sped/R1"]) for r in rows if r.get("sped/R1")],
        "loss": [float(r["train/loss"]) for r in rows if r.get("train/loss")],
        "ckpt_dir": Path(cli.trainer.checkpoint_callback.dirpath),
    }


def test_training_lowers_loss_and_raises_recall(trained: dict) -> None:
    loss = trained["loss"]
    first, last = np.mean(loss[:8]), np.mean(loss[-8:])
    assert last < first - 0.1, (first, last)
    # 60 queries: 0.1 is 6 more found. The trajectory depends on float32 rounding, which differs between
    # CPUs (measured: +0.13 on an AVX-512 machine, more elsewhere), so the bound leaves room for that.
    assert max(trained["r1"]) >= trained["r1_untrained"] + 0.1, (trained["r1_untrained"], trained["r1"])


def test_export_loads_with_load_model_and_matches_module(trained: dict, synth_data: tuple[Path, Path]) -> None:
    ckpt_dir = trained["ckpt_dir"]
    module: VPRLightningModule = trained["cli"].model.eval()
    flat, config = ckpt_dir / "last.pt", ckpt_dir / "last.json"
    assert flat.is_file() and config.is_file()
    sd = torch.load(flat, map_location="cpu", weights_only=True)
    assert list(sd) == list(VPRModel(module.model_config).state_dict())  # the released flat layout

    model = load_model(flat, config=json.loads(config.read_text()))
    ds = load_dataset("sped", synth_data[1])
    images = preprocess_exact(ds.q_paths()[:6], (112, 112))
    with torch.no_grad():
        want = module(images)
        torch.testing.assert_close(model(images), want, atol=1e-6, rtol=0)
        # the Lightning checkpoint itself also loads (weights under state_dict), and exports the same
        last_ckpt = load_model(ckpt_dir / "last.ckpt", config=json.loads(config.read_text()))
        torch.testing.assert_close(last_ckpt(images), want, atol=1e-6, rtol=0)

    out = ckpt_dir / "cli_export" / "again.pt"
    subprocess.run([sys.executable, "-m", "vpr_ros.training.export", str(ckpt_dir / "last.ckpt"), str(out)],
                   cwd=ckpt_dir, check=True, capture_output=True)
    again = torch.load(out, map_location="cpu", weights_only=True)
    assert all(torch.equal(again[k], sd[k]) for k in sd) and json.loads(out.with_suffix(".json").read_text())

    best = Path(trained["cli"].trainer.checkpoint_callback.best_model_path)
    assert best.with_suffix(".pt").is_file()
    p, _ = export_lightning_checkpoint(best, ckpt_dir / "best_again.pt")
    assert torch.load(p, weights_only=True).keys() == sd.keys()
    restored = VPRLightningModule.load_from_checkpoint(ckpt_dir / "last.ckpt", weights_only=True).eval()
    hparams = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
    finetune = VPRLightningModule(**{**hparams, "init_checkpoint": str(flat)})
    finetune.setup("fit")
    with torch.no_grad():
        torch.testing.assert_close(restored(images), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(finetune.eval()(images), want, atol=1e-6, rtol=0)


def test_ddp_two_processes_on_cpu(synth_data: tuple[Path, Path], tmp_path: Path) -> None:
    gsv, val = synth_data
    cmd = [sys.executable, "-m", "vpr_ros.training", "fit", *_cli_args(tmp_path, gsv, val),
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
           "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = next(tmp_path.glob("logs/version_*"))
    rows = _metric_rows(log_dir)
    assert any(r.get("sped/R1") for r in rows)  # validation gathered both ranks' descriptors
    assert (log_dir / "checkpoints" / "last.pt").is_file()
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert max(steps) + 1 == 3 * 2  # 60 places / 2 ranks / 15 per batch = 2 steps per epoch
