"""Lesion embeddings (TumorImagingBench style) with the PASTA encoder, probes and stability.

Public API::

    from PASTALib.embed import load_embedder, embed_table, read_features, repeated_split_auc
    emb = load_embedder("PASTA_final.pth", device="auto", crop_size=96)   # MissingWeightsError if absent
    emb.embed_points(ct, [(x, y, z)])            # (N, 1024), points in LPS mm
    embed_table("lesions.csv", "features.csv", emb, npz="features.npz")   # resumable, batched
    meta, X = read_features("features.csv")
    repeated_split_auc(X, meta["label"], probe="knn", rng=np.random.default_rng(0))

The probe / stability-summary functions are pure numpy / scikit-learn; the model parts
(``LesionEmbedder``, ``load_embedder``, ``embed_table``) import torch on first use.
"""

from PASTALib.embed.crop import crop_at_point, crop_grid, point_inside, ras_to_lps
from PASTALib.embed.probes import (
    ProbeFit,
    ProbeResult,
    binary_auc_many,
    cosine_similarity_matrix,
    knn_probe,
    logistic_probe,
    repeated_split_auc,
    stratified_three_way_split,
)
from PASTALib.embed.stability import (
    icc_2_1,
    perturbations,
    perturbed_features,
    stability_report,
    summarize_by_kind,
)

__all__ = [
    "ProbeFit", "ProbeResult", "binary_auc_many", "cosine_similarity_matrix", "crop_at_point", "crop_grid",
    "icc_2_1", "knn_probe", "logistic_probe", "perturbations", "perturbed_features", "point_inside", "ras_to_lps",
    "repeated_split_auc", "stability_report", "stratified_three_way_split", "summarize_by_kind",
    "COORD_COLUMNS", "DEFAULT_CROP_SIZE", "EmbeddingError", "FEATURE_PREFIX", "LesionEmbedder", "embed_table",
    "load_embedder", "read_features", "resolve_device", "write_npz",
]

_LAZY = {
    "COORD_COLUMNS", "DEFAULT_CROP_SIZE", "EmbeddingError", "FEATURE_PREFIX", "LesionEmbedder", "embed_table",
    "load_embedder", "read_features", "resolve_device", "write_npz",
}


def __getattr__(name: str):
    if name in _LAZY:
        from PASTALib.embed import extractor

        return getattr(extractor, name)
    raise AttributeError(f"module 'PASTALib.embed' has no attribute {name!r}")


__all__ = sorted({
    "ProbeFit", "ProbeResult", "binary_auc_many", "cosine_similarity_matrix", "crop_at_point", "crop_grid",
    "icc_2_1", "knn_probe", "logistic_probe", "perturbations", "perturbed_features", "point_inside", "ras_to_lps", "repeated_split_auc",
    "stability_report", "stratified_three_way_split", "summarize_by_kind", *_LAZY,
})
