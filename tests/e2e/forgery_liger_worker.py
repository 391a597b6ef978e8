"""Runs INSIDE a trainer's venv: one forgery recipe through the trainer's own entry point, with
`use_liger_kernel: true` acted out on CPU the way the transformers Trainer applies it (a forward bound to the model
instance when the Trainer is built, after our modules are attached; Liger's returns logits at every position). Its
kernels need a GPU, so only that binding is acted out.

argv: trainer (llamafactory | swift), recipe YAML (already pointed at the tiny model, data and output dir), and
the JSON file to write: the loss parts of each training forward the forgery forward ran.
"""
import json
import sys
import types

import transformers.trainer

import custom_modules.forgery.attach as attach

PARTS: list = []


def bind_liger_forward(model, kernel_config=None):
    """What the Trainer's `apply_liger_kernel` does to the model's forward: one bound to the (PEFT-unwrapped)
    instance that ignores `logits_to_keep` and takes any other keyword (here the model's own forward, without the
    forgery fields it would refuse)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    class_forward = type(base).forward

    def forward(self, *args, logits_to_keep=0, **kwargs):
        return class_forward(self, *args, **{k: v for k, v in kwargs.items() if not k.startswith("forgery_")})

    base.forward = types.MethodType(forward, base)


def recording(forgery_forward):
    def forward(hf, original_forward, visual, modules, **kwargs):
        out = forgery_forward(hf, original_forward, visual, modules, **kwargs)
        if modules.training:
            PARTS.append(sorted(modules.last_parts))
        return out
    return forward


def main() -> None:
    trainer, recipe, parts_file = sys.argv[1:4]
    transformers.trainer.apply_liger_kernel = bind_liger_forward
    attach._forgery_forward = recording(attach._forgery_forward)
    if trainer == "llamafactory":
        from custom_modules.integrations.llamafactory_cli import main as qvr_llamafactory

        qvr_llamafactory(["train", recipe])
    else:
        from swift.cli.main import parse_yaml_args
        from swift.pipelines import sft_main

        argv = [recipe]
        parse_yaml_args(argv)
        sft_main(argv)
    with open(parts_file, "w", encoding="utf-8") as out:
        json.dump(PARTS, out)


if __name__ == "__main__":
    main()
