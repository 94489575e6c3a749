from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from src.models.finetune_module import FinetuneModule
from src.models.pretrained import from_pretrained, read_pretrained, save_encoder
from src.models.ssl_module import SSLModule
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENC = dict(backbone="ssamba", size=None, embed_dim=32, depth=2, target_length=160)


def pretrained_ssl():
    return SSLModule(ENC, mask_patches=20)


def finetune(target_length: int = 128, fstride: int = 16, tstride: int = 16, **kwargs) -> FinetuneModule:
    """A fine-tuning module whose data gives target_length frames and whose encoder config sets the
    patch stride (the encoder config holds both, as Hydra's encoder group does)."""
    encoder = {"target_length": target_length, "fstride": fstride, "tstride": tstride}
    encoder = encoder if kwargs.get("pretrained") else {**ENC, **encoder}
    return FinetuneModule(encoder=encoder, **kwargs)


def test_the_patch_stride_is_the_encoder_configs_and_an_old_module_setting_must_agree(tmp_path):
    save_encoder(pretrained_ssl().encoder, tmp_path / "export")
    ft = finetune(128, pretrained=str(tmp_path / "export"), fstride=12, tstride=12)
    assert ft.encoder.patch_stride == (12, 12) and ft.hparams.encoder["fstride"] == 12
    old = FinetuneModule(encoder={**ENC, "target_length": 128, "fstride": 10, "tstride": 10}, fstride=10, tstride=10)
    assert old.encoder.patch_stride == (10, 10)  # a checkpoint that still names it, agreeing
    with pytest.raises(ValueError, match="model.fstride=10 but encoder.fstride=12: the patch stride is the encoder"):
        FinetuneModule(encoder={**ENC, "target_length": 128, "fstride": 12, "tstride": 12}, fstride=10)


def test_handover_from_an_export_copies_weights_and_adapts_the_grid(tmp_path):
    ssl = pretrained_ssl()
    save_encoder(ssl.encoder, tmp_path / "export")
    ft = finetune(128, pretrained=str(tmp_path / "export"), fstride=10, tstride=10, loss="bce")
    src, dst = ssl.encoder, ft.encoder
    torch.testing.assert_close(dst.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert dst.patch_embed.proj.stride == (10, 10) and dst.grid == (12, 12)
    torch.testing.assert_close(dst.layers[1].mixer.A_b_log, src.layers[1].mixer.A_b_log)
    torch.testing.assert_close(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # cls entry kept
    assert dst.pos_embed.shape == (1, 1 + 144, 32)
    assert dst.mask_embed is None  # the mask embedding is not part of the fine-tuned encoder


def test_handover_from_a_lightning_checkpoint_loads_with_weights_only(tmp_path):
    ssl = pretrained_ssl()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(ssl)
    trainer.save_checkpoint(tmp_path / "ssl.ckpt")
    config, state, _ = read_pretrained(tmp_path / "ssl.ckpt")  # torch.load(weights_only=True) inside
    assert config.embed_dim == 32 and "layers.0.mixer.in_proj.weight" in state
    ft = finetune(512, pretrained=str(tmp_path / "ssl.ckpt"), num_classes=50, fstride=10, tstride=10)
    torch.testing.assert_close(ft.encoder.layers[0].mixer.in_proj.weight, ssl.encoder.layers[0].mixer.in_proj.weight)
    assert ft.encoder.grid == (12, 50)


def test_export_round_trip_without_lightning(tmp_path):
    ssl = pretrained_ssl().eval()
    save_encoder(ssl.encoder, tmp_path / "e")
    enc = from_pretrained(tmp_path / "e")
    x = torch.randn(1, 1, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ssl.encoder(x))


def test_checkpoint_that_does_not_fit_is_explained(tmp_path):
    save_encoder(pretrained_ssl().encoder, tmp_path / "e")
    (tmp_path / "e" / "config.json").write_text('{"encoder": {"backbone": "ssamba", "size": "tiny", "depth": 4}}')
    with pytest.raises(
        ValueError, match=r"its config does not describe its weights \(config vs weights: embed_dim 192"
    ):
        from_pretrained(tmp_path / "e")  # found on the header's shapes, before a model is built


def test_linear_probe_freezes_the_encoder_and_head_lr_multiplier():
    recipe = yaml.safe_load((ROOT / "configs" / "model" / "finetune.yaml").read_text())["optimizer"]
    ft = finetune(128, num_classes=5, freeze_encoder=True, loss="bce", optimizer=recipe)
    assert not any(p.requires_grad for p in ft.encoder.parameters())
    ft.trainer = None
    opt = ft.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 1  # head only
    ft = finetune(128, num_classes=5, head_lr_mult=3.0, multilabel=True, optimizer=recipe)
    groups = ft.configure_optimizers()["optimizer"].param_groups
    assert groups[1]["lr"] == pytest.approx(3 * groups[0]["lr"]) and groups[0]["lr"] == recipe["lr"]


def test_the_optimizer_has_one_home_the_recipe():
    """The module holds no optimizer values of its own: built without the recipe's it runs but
    cannot train, and says where the values live."""
    ft = finetune(128, num_classes=5)
    ft.trainer = None
    with pytest.raises(UserError, match="model.optimizer is not set"):
        ft.configure_optimizers()


def test_pooling_mean_excludes_cls_and_cls_pooling_takes_it():
    ft = finetune(128, num_classes=3, fstride=16, tstride=16, loss="bce").eval()
    spec = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        tokens = ft.encoder(spec)
        torch.testing.assert_close(ft(spec), ft.head(tokens[:, 1:].mean(1)))
        ft.hparams.pooling = "cls"
        torch.testing.assert_close(ft(spec), ft.head(tokens[:, 0]))


def test_accuracy_metric_and_losses_are_right():
    ft = finetune(128, num_classes=3, fstride=16, tstride=16)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    target = torch.eye(3)[[0, 1, 0, 0]]
    ft.scores["val_score"](logits, target.argmax(-1))
    assert ft.scores["val_score"].compute() == pytest.approx(3 / 4)
    torch.testing.assert_close(ft.loss(logits, target), torch.nn.functional.cross_entropy(logits, target.argmax(-1)))
    ks = finetune(128, num_classes=3, fstride=16, tstride=16, loss="bce")
    soft = torch.tensor([[0.6, 0.4, 0.0]]).repeat(4, 1)
    torch.testing.assert_close(
        ks.loss(logits, soft), torch.nn.functional.binary_cross_entropy_with_logits(logits, soft)
    )


def test_map_metric_is_macro_average_precision():
    ft = finetune(128, num_classes=2, fstride=16, tstride=16, multilabel=True)
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    labels = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]])
    ft.scores["test_score"](scores, labels)
    # class 0: positives ranked 1st and 3rd -> AP = (1 + 2/3) / 2; class 1: ranked 1st and 2nd -> AP = 1
    assert ft.scores["test_score"].compute().item() == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


class Data:
    """What FinetuneModule reads from a datamodule: the prepared data's classes.json."""

    def __init__(self, num_classes, multilabel):
        self.num_classes, self.multilabel = num_classes, multilabel


def test_classes_and_multilabel_come_from_the_data_and_choose_loss_and_metric():
    for data, loss, expected in [
        (Data(7, False), None, ("ce", "acc")),
        (Data(5, True), None, ("bce", "mAP")),
        (Data(35, False), "bce", ("bce", "acc")),  # KS2's recipe: BCE on mixup-soft labels, accuracy
    ]:
        ft = finetune(loss=loss)
        ft.trainer = type("T", (), {"datamodule": data})()
        ft.setup("fit")
        assert ft.head[1].out_features == data.num_classes and (ft.loss_name, ft.metric_name) == expected
        assert (ft.hparams.num_classes, ft.hparams.multilabel) == (data.num_classes, data.multilabel)
    ft = finetune(num_classes=3)
    ft.trainer = type("T", (), {"datamodule": Data(4, False)})()
    with pytest.raises(ValueError, match="the model has 3 classes .* but the data has 4"):
        ft.setup("fit")
    with pytest.raises(ValueError, match="pooling"):
        finetune(pooling="max")


def test_export_cli_writes_a_fine_tuned_encoder_that_loads_alone(tmp_path):
    from src.export import export

    ssl = pretrained_ssl()
    save_encoder(ssl.encoder, tmp_path / "pre")
    ft = finetune(128, pretrained=str(tmp_path / "pre"), num_classes=4, fstride=10, tstride=10, loss="bce")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(ft)
    trainer.save_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    (tmp_path / "pre" / "encoder.safetensors").unlink()  # the checkpoint must not need it any more
    reloaded = FinetuneModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert reloaded.encoder.grid == (12, 12)
    with pytest.raises(ValueError, match="does not record the normalisation"):
        export(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))  # saved without a datamodule
    out = export(str(tmp_path / "run" / "checkpoints" / "last.ckpt"), None, -6.8, 5.6)
    assert out == tmp_path / "run" / "encoder"  # where pretraining writes its export too
    enc = from_pretrained(out)
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ft.encoder.eval()(x))


@pytest.mark.parametrize("saved,asked", [("ssast", "ssamba"), ("ssamba", "ssast")])
def test_an_export_of_another_backbone_is_refused_naming_both_and_the_override(saved, asked, tmp_path):
    """model.pretrained (fine-tuning) and model.init_from (SSL) never swap the backbone encoder= asks for."""
    from tests.helpers.encoders import make_encoder

    def heads(backbone):
        return {"num_heads": 2} if backbone == "ssast" else {}

    save_encoder(make_encoder(saved, None, embed_dim=32, depth=2, target_length=64, **heads(saved)), tmp_path / "e")
    recipe = {"backbone": asked, "size": None, "embed_dim": 32, "depth": 2, "target_length": 64, **heads(asked)}
    want = f"holds a {saved} encoder but this run asks for encoder={asked}; pass encoder={saved}"
    with pytest.raises(UserError, match=want):
        FinetuneModule(recipe, num_classes=3, pretrained=str(tmp_path / "e"))
    with pytest.raises(UserError, match=want):
        SSLModule(recipe, mask_patches=4, val_mask_patches=4, init_from=str(tmp_path / "e"))
