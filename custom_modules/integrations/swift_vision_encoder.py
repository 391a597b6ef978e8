"""ms-swift side of the custom vision encoder: a model type, its arch, and the save callback, registered by
swift_plugin; a recipe selects them with `model_type: qwen3_vl_vision_encoder` (template qwen3_vl) and
`callbacks: [vision_encoder_save]`, its settings in the ENV block (QVR_VISION_ENCODER_ENCODER=dinov2, ...).

The model type's loader is the Qwen3-VL loader, then the encoder's image processor and the encoder + merger in
place of `model.visual`. Its arch names `model.visual.encoder` the vision tower and `model.visual.merger` the
aligner, so swift's own flags keep their meaning: `freeze_vit` freezes the encoder, `freeze_aligner: false`
trains the merger (a modules_to_save under LoRA), `freeze_llm` the LM; `vit_lr` / `aligner_lr` /
`learning_rate` are the encoder / merger / LM rates. The callback warns when what swift's flags train differs from
the settings' stage / encoder_training, and writes `vision_encoder/` beside every checkpoint. merger_path is
relative to the working directory, as swift's own output_dir is.
"""

from __future__ import annotations

from swift.callbacks import callbacks_map
from swift.model import ModelGroup, ModelMeta, MultiModelKeys, register_model, register_model_arch
from swift.model.models.qwen import Qwen3VLLoader
from swift.template import TemplateType
from swift.utils import get_logger

from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import env_where
from custom_modules.vision_encoder.processing import attach_image_processor
from custom_modules.vision_encoder.settings import VisionEncoderSettings, parse_settings, resolve_paths
from custom_modules.vision_encoder.training import SaveVisionEncoderCallback, prepare_model, stage_warnings

MODEL_TYPE = "qwen3_vl_vision_encoder"
CALLBACK = FEATURE_CALLBACKS["vision_encoder"]
WHERE = env_where("vision_encoder")
logger = get_logger()


def register(environment_settings) -> None:
    """Register the model type, arch and callback; the settings are read when swift loads the model."""
    def settings() -> VisionEncoderSettings:
        return resolve_paths(parse_settings(environment_settings("vision_encoder"), WHERE), WHERE)

    class VisionEncoderLoader(Qwen3VLLoader):
        def get_processor(self, model_dir, config):
            processor = super().get_processor(model_dir, config)
            return attach_image_processor(processor, settings(), config.vision_config.spatial_merge_size)

        def get_model(self, model_dir, config, processor, model_kwargs):
            return prepare_model(super().get_model(model_dir, config, processor, model_kwargs), settings())

    class SwiftSaveCallback(SaveVisionEncoderCallback):
        def __init__(self, args, trainer):  # swift builds callbacks as cls(args, trainer)
            super().__init__(settings())

        def on_init_end(self, args, state, control, model=None, **kwargs):  # the trainer has its (tuned) model
            for warning in stage_warnings(model, self.settings, WHERE):
                logger.warning(warning)

    register_model_arch(MultiModelKeys(MODEL_TYPE, language_model=["model.language_model", "lm_head"],
                                       aligner=["model.visual.merger"], vision_tower=["model.visual.encoder"]),
                        exist_ok=True)
    register_model(ModelMeta(MODEL_TYPE, [ModelGroup([])], VisionEncoderLoader, template=TemplateType.qwen3_vl,
                             model_arch=MODEL_TYPE, architectures=["Qwen3VLForConditionalGeneration"],
                             is_multimodal=True, requires=["transformers>=4.57", "qwen_vl_utils>=0.0.14"],
                             tags=["vision"]),
                   exist_ok=True)
    callbacks_map[CALLBACK] = SwiftSaveCallback
