"""The PASTA network: 3D UNet + attribute head (state-dict compatible with PASTA_final.pth).

Public API::

    from PASTALib.model import PastaUNet, UNetConfig, load_pasta_checkpoint, default_weights_path
    model = PastaUNet()                      # published size (~241M parameters)
    load_pasta_checkpoint(model, default_weights_path())
    out = model(x)                           # PastaOutput(segmentation=[5 logits], attribute_logits, feature)
    decode_attributes(out.attribute_logits)  # report wording per attribute
"""

from PASTALib.model.attributes import (
    ATTRIBUTE_GROUPS,
    GROUP_SIZES,
    IGNORE_INDEX,
    NUM_ATTRIBUTE_LOGITS,
    AttributeGroup,
    AttributePrediction,
    decode_attributes,
    encode_attributes,
    grouped_cross_entropy,
    split_logits,
)
from PASTALib.model.checkpoint import (
    CheckpointError,
    LoadResult,
    WEIGHTS_ENV,
    adapt_first_conv,
    build_model_from_checkpoint,
    default_weights_dir,
    default_weights_path,
    describe_state_dict,
    extract_state_dict,
    infer_config,
    load_pasta_checkpoint,
    load_state_dict_file,
)
from PASTALib.model.unet import PastaOutput, PastaUNet, UNetConfig, count_parameters

__all__ = [
    "ATTRIBUTE_GROUPS", "GROUP_SIZES", "IGNORE_INDEX", "NUM_ATTRIBUTE_LOGITS", "AttributeGroup",
    "AttributePrediction", "CheckpointError", "LoadResult", "PastaOutput", "PastaUNet", "UNetConfig",
    "WEIGHTS_ENV", "adapt_first_conv", "build_model_from_checkpoint", "count_parameters",
    "decode_attributes", "default_weights_dir", "default_weights_path", "describe_state_dict",
    "encode_attributes", "extract_state_dict", "grouped_cross_entropy", "infer_config",
    "load_pasta_checkpoint", "load_state_dict_file", "split_logits",
]
