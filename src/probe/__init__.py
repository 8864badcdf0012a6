"""Attentive probes on stored features: labels, feature lookup, splits, training, evaluation.

  labels.py    the labels CSV (`path,label[,split]`)
  data.py      labelled paths → clips → views (FeatureIndex), reading them (ViewReader, ViewDataset)
  model.py     the probe: architecture, initialisation, the probe file (save / load / checks)
  train.py     ProbeTrainer: candidates trained together, resumable after every epoch
  report.py    metrics, the confusion matrix, CSV / JSON outputs
  encode.py    raw inputs encoded in memory as the extractors would
  fit.py       `train` as functions: plan_training → train_probe
  classify.py  `eval` and `predict` as functions

Every name is importable from `src.probe` as before the split.
"""
from src.probe.labels import SPLITS, LabelRow, file_digest, listed, load_class_names, read_labels
from src.probe.data import (
    EXTRACTION_KEYS, Clip, FeatureIndex, FeatureRef, ViewDataset, ViewReader, clip_views, collate_views,
    describe_difference, encoder_identity, resolve_clips, split_clips, survey_views,
)
from src.probe.model import (
    PROBE_FORMAT, LoadedProbe, ProbeConfig, build_probe, check_encoder_record, check_features_match, forward_batch,
    load_probe, recorded_classes, save_probe,
)
from src.probe.train import (
    Candidate, ProbeTrainer, TrainSettings, TrainState, class_weight_tensor, clip_loss, epoch_order, evaluate_clips,
    lr_at,
)
from src.probe.report import classification_metrics, plot_confusion, top_k_header, top_k_rows, write_csv, write_json
from src.probe.encode import encode_raw_input
from src.probe.fit import TrainingPlan, TrainingResult, plan_training, train_probe
from src.probe.classify import (
    Runtime, classify_raw_inputs, classify_views, evaluate_probe, feature_file_views, feature_sources, labelled_clips,
    predict,
)

_listed = listed  # the name before the split

__all__ = [
    "SPLITS", "LabelRow", "file_digest", "listed", "load_class_names", "read_labels",
    "EXTRACTION_KEYS", "Clip", "FeatureIndex", "FeatureRef", "ViewDataset", "ViewReader", "clip_views",
    "collate_views", "describe_difference", "encoder_identity", "resolve_clips", "split_clips", "survey_views",
    "PROBE_FORMAT", "LoadedProbe", "ProbeConfig", "build_probe", "check_encoder_record", "check_features_match",
    "forward_batch", "load_probe", "recorded_classes", "save_probe",
    "Candidate", "ProbeTrainer", "TrainSettings", "TrainState", "class_weight_tensor", "clip_loss", "epoch_order",
    "evaluate_clips", "lr_at",
    "classification_metrics", "plot_confusion", "top_k_header", "top_k_rows", "write_csv", "write_json",
    "encode_raw_input",
    "TrainingPlan", "TrainingResult", "plan_training", "train_probe",
    "Runtime", "classify_raw_inputs", "classify_views", "evaluate_probe", "feature_file_views", "feature_sources",
    "labelled_clips", "predict",
]
