"""``maskopt weights import``: pretrained weights from another library's checkpoint."""

from __future__ import annotations

import click


@click.group()
def weights():
    """Manage pretrained weights files for the `weights:` of a space.

    \b
    Example:
      maskopt weights import efficientnet-lite0.pth --backbone tf_efficientnet_lite0
    """


@weights.command("import")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--backbone", required=True, help="timm model name the checkpoint is for, e.g. tf_efficientnet_lite0.")
@click.option("--out", type=click.Path(file_okay=False), default="weights", show_default=True,
              help="Folder to write <backbone>.safetensors into (created when missing).")
@click.option("--force", is_flag=True, help="Replace an existing file that holds other weights.")
def import_weights(src, backbone, out, force):
    """Convert checkpoint SRC into OUT/<backbone>.safetensors.

    SRC is a state dict saved with torch.save (read with weights_only=True: a file that needs
    code to load is refused) or a .safetensors file; a checkpoint dict holding it under
    state_dict / model / model_ema / state_dict_ema works too. timm key names map by name;
    other layouts (efficientnet_pytorch, torchvision) map tensor by tensor in order, and every
    shape must match. The file keeps the checkpoint's classifier.

    \b
    Example:
      maskopt weights import efficientnet-lite0.pth --backbone tf_efficientnet_lite0 --out weights
    """
    from maskopt.api import import_weights as run_import

    result = run_import(src, backbone=backbone, out=out, force=force)
    verb = "unchanged" if result.unchanged else "wrote"
    click.echo(f"{verb} {result.path} ({result.num_tensors} tensors, from {result.layout} layout)")
