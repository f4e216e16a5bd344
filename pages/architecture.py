"""Architecture page: what each VGG of the paper is made of, with the numbers counted on the model."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import urlstate as url
from ui.lessons import Lessons
from ui.shell import ensure_app_shell
from vgg import summary
from vgg.errors import VGGError
from vgg.figures import architecture as figures
from vgg.model import CONFIG_LABELS, CONFIG_NAMES, torchvision_name

lesson = Lessons("architecture")
KEEP = {"persist_state": "page"}  # a value in a tab survives a look at another tab
NUMBER_COLUMNS = {
    "type": st.column_config.TextColumn(width="medium"),  # "BatchNorm2d" whole
    "parameters": st.column_config.NumberColumn(format="localized"),
    "trainable": st.column_config.NumberColumn(format="localized"),
    "multiply-adds": st.column_config.NumberColumn(format="localized"),
    "output memory": st.column_config.NumberColumn(format="bytes", help="fp32 output of one image"),
}


@st.cache_data(show_spinner=False)
def layer_table(config: str, batch_norm: bool, input_size: int, num_classes: int) -> pd.DataFrame:
    return summary.layer_table(config, batch_norm=batch_norm, input_size=input_size, num_classes=num_classes)


# The page's view in its address: /architecture?config=E&bn=0&size=224&classes=1000
URL = (
    url.Param("config", "config", url.choice(CONFIG_NAMES), "D"),
    url.Param("bn", "batch_norm", url.flag, False, url.show_flag),
    url.Param("size", "input_size", url.integer(summary.MIN_INPUT_SIZE, summary.MAX_INPUT_SIZE), 224),
    url.Param("classes", "num_classes", url.integer(2, 100_000), 1000),
)


def model_ui() -> tuple[str, bool, int, int]:
    start = url.initial(URL)  # the address's view, or the defaults
    left, middle, right, far = st.columns([3, 1.4, 1.4, 1.4], vertical_alignment="bottom")
    config = left.selectbox("Configuration (Table 1)", CONFIG_NAMES, index=CONFIG_NAMES.index(start["config"]),
                            format_func=CONFIG_LABELS.get, key="config")
    batch_norm = middle.toggle("Batch norm", value=start["batch_norm"], key="batch_norm")
    size = right.number_input("Input size (px)", min_value=summary.MIN_INPUT_SIZE, max_value=summary.MAX_INPUT_SIZE,
                              value=start["input_size"], step=32, key="input_size")
    classes = far.number_input("Classes", min_value=2, max_value=100_000, value=start["num_classes"],
                               key="num_classes")
    return config, batch_norm, int(size), int(classes)


ensure_app_shell()
st.title("Architecture")
lesson("intro")
config, batch_norm, input_size, num_classes = model_ui()
url.publish(URL)
try:
    table = layer_table(config, batch_norm, input_size, num_classes)
except VGGError as e:
    st.error(str(e))
    st.stop()
totals = summary.table_totals(table)

cols = st.columns([1.5, 1.2, 0.8, 1.1])
cols[0].metric("Parameters", summary.format_count(totals["total_params"]))
cols[1].metric("Multiply-adds per image", summary.format_si(totals["total_macs"]))
cols[2].metric("Weight layers", summary.weight_layers(config))
cols[3].metric("Weights in fp32", summary.format_bytes(totals["param_bytes"]))
if torchvision_name(config, batch_norm) is None:
    st.info(lesson.text("no_weights"), icon=":material/info:")

tab_names = ["Layers", "Block diagram", "Paper's Table 1", "Lessons"]
# Only the open tab runs and is sent: a pupil's browser draws 2 charts on arrival, not 6.
layers_tab, diagram_tab, paper_tab, lessons_tab = st.tabs(tab_names, key="architecture_section",
                                                          on_change="rerun")
if layers_tab.open:
    with layers_tab:
        st.dataframe(summary.readable_layer_table(table), column_config=NUMBER_COLUMNS, hide_index=True,
                     height=420)
        log_y = st.toggle("Logarithmic scale", value=True, key="log_y", **KEEP)
        st.plotly_chart(figures.layer_bars(table, "params", log_y=log_y, title="Parameters per layer"))
        st.plotly_chart(figures.layer_bars(table, "macs", log_y=log_y, title="Multiply-adds per layer"))
if diagram_tab.open:
    with diagram_tab:
        title = f"{CONFIG_LABELS[config]} at {input_size}×{input_size}"
        st.plotly_chart(figures.block_diagram(table, title=title))
        st.caption("Box height grows with the spatial size, thickness with the channels; hover for details.")
if paper_tab.open:
    with paper_tab:
        paper = summary.paper_table1(num_classes)
        highlight = {"background-color": "#fde68a", "color": "#111", "font-weight": "bold"}
        st.dataframe(paper.style.set_properties(subset=[config], **highlight), height=880)
        st.caption("Weight layers: " + ", ".join(f"{c} {summary.weight_layers(c)}" for c in CONFIG_NAMES)
                   + ". A-LRN and C have no published ImageNet weights.")

if lessons_tab.open:
    with lessons_tab:
        lesson("conv_stacks")
        channels = st.slider("Channels C", min_value=16, max_value=512, value=256, step=16,
                             key="stack_channels", **KEEP)
        for depth in (2, 3):
            col_a, col_b = st.columns(2)
            stack, single = summary.conv_stack_weights(channels, depth)
            view = 2 * depth + 1
            col_a.metric(f"{depth} × 3×3 (sees {view}×{view})", summary.format_count(stack),
                         delta=f"{100 * (stack - single) / single:.0f} % weights", delta_color="inverse")
            col_b.metric(f"one {view}×{view}", summary.format_count(single))
        st.plotly_chart(figures.conv_stack_figure(channels))

        lesson("parameters")
        left, right = st.columns(2)
        fc_params = 100 * totals["fc_params"] / totals["total_params"]
        fc_macs = 100 * totals["fc_macs"] / totals["total_macs"]
        left.metric("Fully connected share of parameters", f"{fc_params:.1f} %")
        right.metric("Fully connected share of multiply-adds", f"{fc_macs:.2f} %")
        st.plotly_chart(figures.stage_share_figure(table))

        lesson("adaptive_pooling")
        left, right = st.columns(2)
        pool_in = left.number_input("Input cells", min_value=1, max_value=64, value=32, key="pool_in",
                                    **KEEP)
        pool_out = right.number_input("Output cells", min_value=1, max_value=32, value=7, key="pool_out",
                                      **KEEP)
        windows = summary.adaptive_pool_windows(int(pool_in), int(pool_out))
        st.plotly_chart(figures.pool_windows_figure(windows, int(pool_in)))
        last_map = table.loc[table["stage"].str.startswith("block"), "output_shape"].iloc[-1]
        st.caption(f"With {input_size}×{input_size} images the last max-pool leaves {last_map}; "
                   "the pool turns it into 512×7×7.")

        lesson("batch_norm")
        plain = summary.table_totals(layer_table(config, False, input_size, num_classes))["total_params"]
        with_bn = summary.table_totals(layer_table(config, True, input_size, num_classes))["total_params"]
        cols = st.columns(3)
        cols[0].metric(f"{config} without batch norm", summary.format_count(plain))
        cols[1].metric(f"{config} with batch norm", summary.format_count(with_bn))
        cols[2].metric("Added: γ and β per channel", summary.format_count(with_bn - plain),
                       delta=f"+{100 * (with_bn - plain) / plain:.4f} %", delta_color="off")
