"""Views of attention: the maps a real model computes (``maps``), pictures of them (``plots``), an
interactive HTML viewer (``viewer``) and the head report (``head_report``)."""

from encoderkit.views.head_report import (
    HeadReport,
    format_table,
    head_report,
    pattern_report,
    plot_head_map,
)
from encoderkit.views.image_plots import attention_rollout, plot_image_attention
from encoderkit.views.maps import image_attention, load_text_model, text_attention
from encoderkit.views.plots import plot_heads, plot_overview, plot_run
from encoderkit.views.viewer import attention_html, write_attention_html

__all__ = [
    "HeadReport",
    "attention_html",
    "attention_rollout",
    "format_table",
    "head_report",
    "image_attention",
    "load_text_model",
    "pattern_report",
    "plot_head_map",
    "plot_heads",
    "plot_image_attention",
    "plot_overview",
    "plot_run",
    "text_attention",
    "write_attention_html",
]
