"""Tests for pixelllm.viz: artists land at the given coordinates, colours agree between caption and
points, the viewer's callbacks drive the rendered state, GIFs have one frame per word."""
import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pixelllm import viz as P  # noqa: E402

TAB10 = np.asarray([mcolors.to_rgba(c) for c in matplotlib.colormaps["tab10"].colors])


def _img(h=40, w=60, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _ax():
    return Figure(figsize=(3, 3)).add_subplot()


def _by_gid(ax, gid):
    arts = [a for a in [*ax.collections, *ax.patches, *ax.lines, *ax.texts, *ax.images] if a.get_gid() == gid]
    assert len(arts) == 1, f"{gid}: {len(arts)} artists"
    return arts[0]


# ---------------------------------------------------------------------------------------------- inputs
def test_word_colors_cycle_tab10():
    c = P.word_colors(13)
    assert c.shape == (13, 4)
    np.testing.assert_allclose(c[:10], TAB10)
    np.testing.assert_allclose(c[10:], TAB10[:3])  # cycles


def test_as_rgb_layouts_and_range_errors():
    chw = np.zeros((3, 5, 7), np.float32)
    chw[0] = 1.0
    out = P.as_rgb(chw)
    assert out.shape == (5, 7, 3) and out[..., 0].min() == 1.0 and out[..., 1].max() == 0.0
    assert P.as_rgb(np.full((4, 4), 7, np.uint8)).shape == (4, 4, 3)
    assert P.as_rgb(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.as_rgb(np.full((4, 4, 3), 200.0))
    with pytest.raises(ValueError, match="shape"):
        P.as_rgb(np.zeros((2, 4, 4, 3)))


def test_clean_tokens_sentencepiece_and_plain():
    assert P.clean_tokens(["▁a", "▁tri", "angle", "</s>"]) == [("a", False), ("tri", True), ("angle", False), ("</s>", False)]
    assert P.clean_tokens(["a", "red", "ball"]) == [("a", False), ("red", True), ("ball", True)]


# ---------------------------------------------------------------------------------------------- scenes
def test_draw_boxes_rectangles_equal_boxes_and_reject_xywh():
    ax = _ax()
    boxes = np.array([[1.0, 2.0, 11.0, 22.0], [5.5, 0.0, 6.5, 3.0]])
    rects = P.draw_boxes(ax, boxes, labels=["a", "b"])
    for r, (x0, y0, x1, y1) in zip(rects, boxes):
        assert r.get_xy() == (x0, y0) and r.get_width() == x1 - x0 and r.get_height() == y1 - y0
    np.testing.assert_allclose([r.get_edgecolor() for r in rects], TAB10[:2])
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    with pytest.raises(ValueError, match=r"boxes\[1\].*x, y, w, h"):
        P.draw_boxes(_ax(), [[0, 0, 10, 10], [20, 20, 5, 5]])  # an xywh box by mistake


def test_overlay_masks_paints_colours_later_on_top():
    m = np.zeros((2, 4, 5), bool)
    m[0, :2, :3] = True
    m[1, 1:3, 2:4] = True  # overlaps mask 0 at (1, 2)
    im = P.overlay_masks(_ax(), m, alpha=0.5)
    rgba = np.asarray(im.get_array())
    np.testing.assert_allclose(rgba[0, 0], [*TAB10[0, :3], 0.5], atol=1e-6)
    np.testing.assert_allclose(rgba[1, 2], [*TAB10[1, :3], 0.5], atol=1e-6)
    assert rgba[3, 4, 3] == 0.0
    assert im.get_extent() == [0, 5, 4, 0]  # pixel frame, origin top-left


def test_show_scene_object_colour_shared_by_box_and_mask():
    img = _img(20, 30)
    masks = np.zeros((2, 20, 30), bool)
    masks[1, 5:10, 5:10] = True
    ax = P.show_scene(_ax(), img, boxes=[[0, 0, 4, 4], [5, 5, 10, 10]], masks=masks, labels=["x", "y"])
    box1 = _by_gid(ax, "box:1")
    rgba = np.asarray(_by_gid(ax, "masks").get_array())
    np.testing.assert_allclose(box1.get_edgecolor()[:3], rgba[7, 7, :3], atol=1e-6)
    assert ax.get_xlim() == (0, 30) and ax.get_ylim() == (20, 0)


# ---------------------------------------------------------------------------------------------- word points
def test_word_points_offsets_and_colours_wx2_normalized_and_valid():
    img = _img(40, 80)  # H=40, W=80
    words = ["a", "red", "ball", "here"]
    pts_n = np.array([[0.5, 0.5], [0.25, 0.75], [np.nan, np.nan], [1.0, 0.0]])
    ax = P.plot_word_points(_ax(), img, words, pts_n, normalized=True, valid=[True, True, True, False])
    sc = _by_gid(ax, "word_points")
    # word 2 is NaN, word 3 invalid -> only words 0 and 1, scaled by (W, H) = (80, 40)
    np.testing.assert_allclose(sc.get_offsets(), [[40.0, 20.0], [20.0, 30.0]])
    np.testing.assert_allclose(sc.get_facecolors()[:, :3], TAB10[:2, :3])


def test_word_points_wx4_corners_and_boxes_from_unordered_corners():
    words = ["▁a", "▁cube"]
    pts = np.array([[1.0, 2.0, 11.0, 12.0], [30.0, 25.0, 20.0, 5.0]])  # word 1: corners swapped
    ax = P.plot_word_points(_ax(), _img(), words, pts)
    np.testing.assert_allclose(_by_gid(ax, "word_points").get_offsets(), pts.reshape(-1, 2))
    r1 = _by_gid(ax, "word_box:1")
    assert r1.get_xy() == (20.0, 5.0) and r1.get_width() == 10.0 and r1.get_height() == 20.0
    np.testing.assert_allclose(r1.get_edgecolor()[:3], TAB10[1, :3])


def test_word_points_highlight_and_upto():
    pts = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    ax = P.plot_word_points(_ax(), _img(), list("abcd"), pts, highlight=2, upto=2, fade=0.3)
    np.testing.assert_allclose(_by_gid(ax, "word_points").get_offsets(), pts[:2])
    np.testing.assert_allclose(_by_gid(ax, "word_points").get_facecolors()[:, 3], 0.3)
    cur = _by_gid(ax, "word_points:current")
    np.testing.assert_allclose(cur.get_offsets(), pts[2:3])
    np.testing.assert_allclose(cur.get_facecolors()[0, :3], TAB10[2, :3])
    with pytest.raises(ValueError, match="3 rows for 4 words"):
        P.plot_word_points(_ax(), _img(), list("abcd"), pts[:3])


# ---------------------------------------------------------------------------------------------- caption
def test_caption_colours_match_points_and_layout():
    words = ["▁a", "▁tri", "angle", "▁left"]
    fig = Figure(figsize=(4, 2))
    ax = P.caption_colored(fig.add_subplot(), words)
    texts = {t.get_gid(): t for t in ax.texts}
    assert [texts[f"caption_word:{i}"].get_text() for i in range(4)] == ["a", "tri", "angle", "left"]
    for i in range(4):
        np.testing.assert_allclose(mcolors.to_rgba(texts[f"caption_word:{i}"].get_color()), TAB10[i])
    # monospace layout: "angle" starts exactly 3 characters after "tri" (no space), "tri" 2 after "a"
    x = [texts[f"caption_word:{i}"].get_position()[0] for i in range(4)]
    np.testing.assert_allclose(x[2] - x[1], 3 * (x[1] - x[0]) / 2)
    # same colours as the points of the same words
    pax = P.plot_word_points(_ax(), _img(), words, np.arange(8.0).reshape(4, 2))
    np.testing.assert_allclose(_by_gid(pax, "word_points").get_facecolors(),
                               [mcolors.to_rgba(texts[f"caption_word:{i}"].get_color()) for i in range(4)])


def test_caption_wraps_inside_axes_and_highlights():
    words = [f"▁word{i}" for i in range(40)]
    fig = Figure(figsize=(3, 2))
    ax = P.caption_colored(fig.add_subplot(), words, highlight=5, upto=5)
    pos = np.array([t.get_position() for t in ax.texts])
    assert len(set(np.round(pos[:, 1], 6))) > 3  # several lines
    assert (pos >= 0).all() and (pos <= 1).all()
    t5 = [t for t in ax.texts if t.get_gid() == "caption_word:5"][0]
    assert t5.get_fontweight() == "bold"
    t6 = [t for t in ax.texts if t.get_gid() == "caption_word:6"][0]
    assert mcolors.to_rgba(t6.get_color()) == mcolors.to_rgba("0.8")  # not generated yet


# ---------------------------------------------------------------------------------------------- traces
LN_RECORD = {
    "dataset_id": "synthetic", "image_id": "1", "annotator_id": 0, "caption": "a red ball",
    "timed_caption": [{"utterance": "a red", "start_time": 0.0, "end_time": 1.0},
                      {"utterance": "ball", "start_time": 1.5, "end_time": 2}],
    # two segments, out of time order, one point outside [0, 1]
    "traces": [[{"x": 0.5, "y": 0.5, "t": 1.6}, {"x": 0.6, "y": 0.4, "t": 1.9}],
               [{"x": 0.1, "y": 0.1, "t": 0.0}, {"x": 0.2, "y": 0.3, "t": 0.5}, {"x": -0.1, "y": 0.2, "t": 1.2}]],
}


def test_narrative_to_trace_spans():
    d = P.narrative_to_trace(LN_RECORD)
    np.testing.assert_allclose(d["times"], [0.0, 0.5, 1.2, 1.6, 1.9])
    np.testing.assert_allclose(d["trace"][2], [-0.1, 0.2])
    assert d["utterances"] == ["a red", "ball"]
    assert d["spans"] == [(0, 2), (3, 5)]  # t=1.2 falls between the two utterances


def test_plot_narrative_trace_lines_in_pixels_and_colours():
    d = P.narrative_to_trace(LN_RECORD)
    img = _img(50, 100)
    ax = P.plot_narrative_trace(_ax(), img, d["trace"], word_spans=d["spans"], normalized=True)
    full = _by_gid(ax, "trace")
    np.testing.assert_allclose(np.c_[full.get_xdata(), full.get_ydata()], d["trace"] * [100, 50])
    s1 = _by_gid(ax, "trace_span:1")
    np.testing.assert_allclose(np.c_[s1.get_xdata(), s1.get_ydata()], d["trace"][3:5] * [100, 50])
    np.testing.assert_allclose(mcolors.to_rgba(s1.get_color()), TAB10[1])
    s0 = _by_gid(ax, "trace_span:0")  # joins up with the next point
    assert len(s0.get_xdata()) == 3
    with pytest.raises(ValueError, match=r"word_spans\[0\]"):
        P.plot_narrative_trace(_ax(), img, d["trace"], word_spans=[(0, 9)], normalized=True)


def test_split_phrases_and_word_groups():
    toks = ["▁in", "▁this", "▁image", "▁we", "▁can", "▁see", "▁a", "▁big", "▁red", "▁st", "ar", "▁in", "▁the",
            "▁top", "▁left", "▁corner", ",", "▁and", "▁a", "▁blue", "▁cube", "."]
    assert P.word_groups(toks)[9] == [9, 10] and P.word_groups(toks)[14] == [15, 16]
    ph = P.split_phrases(toks)
    assert [P.phrase_text(toks, g) for g in ph] == ["in this image", "we can see", "a big red star",
                                                   "in the top left corner", "and a blue cube"]
    assert sorted(i for g in ph for i in g) == list(range(len(toks)))  # every token in exactly one phrase
    assert P.split_phrases(["a", "red", "ball", "on", "the", "mat"]) == [[0, 1, 2], [3, 4, 5]]  # plain words
    cols = P.phrase_colors(10)
    assert not any(np.allclose(c, TAB10[7]) for c in cols)  # no grey
    assert not np.allclose(cols[0], cols[1]) and np.allclose(cols[0], cols[9])  # 9 colours, cycling


def test_figure_word_trace_one_point_per_word_phrase_panel_and_key():
    img = _img(64, 64)
    words = ["▁a", "▁red", "▁st", "ar", "▁on", "▁the", "▁left"]
    pts = np.array([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 20.0, 20.0], [20.0, 20.0, 30.0, 30.0],
                    [30.0, 30.0, 40.0, 40.0], [40.0, 0.0, 50.0, 10.0], [np.nan] * 4, [50.0, 0.0, 60.0, 10.0]])
    d = P.narrative_to_trace(LN_RECORD)
    fig = P.figure_word_trace(img, words, pts, gt_trace=d["trace"], gt_normalized=True, gt_spans=d["spans"],
                              gt_words=d["utterances"], title="demo", n_highlight=1)
    assert isinstance(fig, Figure)
    overview, star, cap_ax, gt_ax, gt_cap = fig.axes
    # one point per word: "star" = mean of its two tokens' box centres; "the" has no valid point
    np.testing.assert_allclose(_by_gid(overview, "word_points").get_offsets(),
                               [[5, 5], [15, 15], [30, 30], [45, 5], [55, 5]])
    cols = P.phrase_colors(2)
    np.testing.assert_allclose(_by_gid(overview, "word_points").get_facecolors(), cols[[0, 0, 0, 1, 1]])
    assert star.get_title() == "“a red star”"
    np.testing.assert_allclose(_by_gid(star, "phrase_points:0").get_offsets(), [[5, 5], [15, 15], [30, 30]])
    box = _by_gid(star, "phrase_box:0")  # mean of the phrase's 4 token boxes
    assert box.get_bbox().bounds == (15.0, 15.0, 10.0, 10.0) and box.get_linestyle() == "--"
    np.testing.assert_allclose(_by_gid(star, "context_points").get_offsets(), [[45, 5], [55, 5]])
    assert [t.get_text() for t in cap_ax.texts] == ["a", "red", "st", "ar", "on", "the", "left"]
    assert [t.get_fontweight() for t in cap_ax.texts][:4] == ["bold"] * 4  # highlighted phrase
    np.testing.assert_allclose(cap_ax.texts[4].get_color(), cols[1])
    np.testing.assert_allclose(np.c_[_by_gid(gt_ax, "trace").get_xdata(), _by_gid(gt_ax, "trace").get_ydata()],
                               d["trace"] * 64)
    assert [t.get_text() for t in gt_cap.texts] == ["a red", "ball"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith("a word's point") and len(labels) == 3
    assert P.figure_to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure's content lies inside the canvas: a tight bbox is no larger than the figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig).draw()
    tight = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= w + 0.01 and tight.y1 <= h + 0.01
    assert len(P.figure_word_trace(img, words, pts, highlight=[]).axes) == 2  # overview + caption
    with pytest.raises(ValueError, match="phrase 5 out of range"):
        P.figure_word_trace(img, words, pts, highlight=[5])


def test_plot_attention_grid_heatmap_covers_the_frame():
    ax = _ax()
    att = np.arange(6.0)
    P.plot_attention_grid(ax, _img(40, 60), att, (2, 3), point=[10.0, 10.0, 30.0, 20.0], title="star")
    heat = _by_gid(ax, "attention")
    np.testing.assert_allclose(heat.get_array(), att.reshape(2, 3) / 5.0)
    assert heat.get_extent() == [0, 60, 40, 0]
    np.testing.assert_allclose(_by_gid(ax, "attention_point").get_offsets(), [[20.0, 15.0]])
    assert _by_gid(ax, "attention_box").get_bbox().bounds == (10.0, 10.0, 20.0, 10.0)
    with pytest.raises(ValueError, match="5 weights for a 2×3 grid"):
        P.plot_attention_grid(_ax(), _img(), np.ones(5), (2, 3))
    fig = P.figure_attention(_img(40, 40), ["a", "star"], np.ones((2, 4)), (2, 2), points=np.zeros((2, 2)))
    assert [a.get_title() for a in fig.axes] == ["“a”", "“star”"] and len(fig.legends) == 1
    mlp = P.figure_attention(_img(40, 40), ["a"], None, (2, 2), points=np.array([[4.0, 6.0]]))  # no attention
    assert _by_gid(mlp.axes[0], "attention").get_alpha() == 0.0
    np.testing.assert_allclose(_by_gid(mlp.axes[0], "attention_point").get_offsets(), [[4.0, 6.0]])
    assert len(mlp.legends[0].get_texts()) == 2  # no heatmap entry


def test_figure_word_step_gt_point_and_title():
    pts = np.array([[10.0, 10.0, 20.0, 20.0], [30.0, 5.0, 40.0, 15.0]])
    gt = np.array([[np.nan] * 4, [31.0, 6.0, 39.0, 14.0]])
    fig = P.figure_word_step(_img(), ["▁a", "▁cube"], pts, 1, gt_points=gt)
    ax = fig.axes[0]
    np.testing.assert_allclose(_by_gid(ax, "word_points:current").get_offsets(), pts[1].reshape(2, 2))
    np.testing.assert_allclose(_by_gid(ax, "gt_point:current").get_offsets(), gt[1].reshape(2, 2))
    np.testing.assert_allclose(_by_gid(ax, "word_centre:current").get_offsets(), [[35.0, 10.0]])
    assert _by_gid(ax, "word_box:current").get_bbox().bounds == (30.0, 5.0, 10.0, 10.0)
    np.testing.assert_allclose(_by_gid(ax, "word_points").get_offsets(), [[15.0, 15.0]])  # earlier: centres
    assert "word 2/2" in fig._suptitle.get_text() and "cube" in fig._suptitle.get_text()
    fig0 = P.figure_word_step(_img(), ["▁a", "▁cube"], pts, 0, gt_points=gt)
    assert not [c for c in fig0.axes[0].collections if c.get_gid() == "gt_point:current"]  # unknown gt
    with pytest.raises(ValueError, match="step 2"):
        P.figure_word_step(_img(), ["▁a", "▁cube"], pts, 2)


# ---------------------------------------------------------------------------------------------- grids, curves, tables
def test_grid_figure_axes():
    items = [dict(image=_img(), boxes=[[1, 1, 5, 5]], title=f"t{i}") for i in range(5)]
    fig = P.grid_figure(items, ncols=3)
    assert len(fig.axes) == 6
    assert [a.get_title() for a in fig.axes[:5]] == [f"t{i}" for i in range(5)]
    assert not fig.axes[5].axison


def test_plot_curves_jsonl_skips_bad_lines_and_smooths(tmp_path):
    log = tmp_path / "train.jsonl"
    lines = [json.dumps({"step": 10, "loss": 1.0}), json.dumps({"step": 20, "loss": 3.0}),
             json.dumps({"step": 20, "val_l1": 0.2}), "", '{"step": 30, "lo']  # truncated last line
    log.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 malformed line\(s\): \[5\]"):
        fig = P.plot_curves(log, keys=("loss", "val_l1"), smooth=0.5)
    ax_loss, ax_l1 = fig.axes
    raw = _by_gid(ax_loss, "raw:train")
    np.testing.assert_allclose(raw.get_xdata(), [10, 20])
    # debiased EMA, w = 0.5: s1 = 0.5 / 0.5 = 1; s2 = (0.25 + 1.5) / 0.75 = 2.333...
    np.testing.assert_allclose(_by_gid(ax_loss, "curve:train").get_ydata(), [1.0, 1.75 / 0.75])
    np.testing.assert_allclose(_by_gid(ax_l1, "curve:train").get_ydata(), [0.2])
    with pytest.raises(ValueError, match="lossy"):
        P.plot_curves([{"step": 1, "loss": 1.0}], keys=("lossy",))


def test_plot_pointing_bars_values_and_missing():
    fig = P.plot_pointing({"pointing_accuracy": 0.6, "pointing_accuracy_target": 0.8, "pointing_accuracy_centre": 0.1,
                           "pointing_accuracy_random_object": 0.3, "pointing_accuracy_generated": float("nan"),
                           "pointing_accuracy_generated_colour": 0.9})
    tf, fr = fig.axes
    heights = {p.get_gid(): p.get_height() for p in tf.patches}
    assert heights == {"bar:pointing_accuracy": 0.6, "bar:pointing_accuracy_target": 0.8,
                       "bar:pointing_accuracy_relative_position": 0.0,            # missing: an empty slot
                       "bar:pointing_accuracy_random_object": 0.3, "bar:pointing_accuracy_centre": 0.1}
    assert [t.get_text() for t in tf.texts] == ["0.60", "0.80", "n/a", "0.30", "0.10"]
    # NaN and missing: empty slots; the colour-only diagnostic beside the metric
    assert [t.get_text() for t in fr.texts] == ["n/a", "n/a", "0.90", "n/a"]
    assert {p.get_gid(): p.get_height() for p in fr.patches}["bar:pointing_accuracy_generated_colour"] == 0.9


def test_plot_curves_dict_of_runs():
    fig = P.plot_curves({"a": [{"loss": 2.0}, {"loss": 1.0}], "b": [{"step": 5, "loss": 4.0}]})
    ax = fig.axes[0]
    np.testing.assert_allclose(_by_gid(ax, "curve:a").get_xdata(), [0, 1])  # index when no step
    np.testing.assert_allclose(_by_gid(ax, "curve:b").get_ydata(), [4.0])


def test_metric_table_and_save_figure(tmp_path):
    ax = P.plot_metric_table(_ax(), {"ours": {"P@0.5": 0.5, "cIoU": None}, "paper": {"P@0.5": 0.903}})
    tab = [c for c in ax.get_children() if c.get_gid() == "metric_table"][0]
    cells = {k: c.get_text().get_text() for k, c in tab.get_celld().items()}
    assert cells[(1, 0)] == "0.500" and cells[(1, 1)] == "–" and cells[(2, 0)] == "0.903"
    out = P.save_figure(ax.figure, tmp_path / "sub" / "t.png", dpi=50)
    assert out.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- inline display
def _kernel_stub():
    from types import SimpleNamespace

    from IPython.core.formatters import DisplayFormatter

    return SimpleNamespace(kernel=object(), display_formatter=DisplayFormatter())


def test_show_figures_inline_registers_png_once_and_leaves_the_figure_alone():
    import base64

    fig = P.figure_word_trace(_img(32, 32), ["▁a", "▁cube"], np.array([[3.0, 4.0], [10.0, 12.0]]))
    assert P.show_figures_inline() is False  # not in a kernel: nothing to do
    shell = _kernel_stub()
    data, _ = shell.display_formatter.format(fig)
    assert set(data) == {"text/plain"} and data["text/plain"].startswith("<Figure size")  # the reported symptom
    before = P.figure_to_png(fig)
    assert P.show_figures_inline(shell) is True
    data, _ = shell.display_formatter.format(fig)
    assert base64.b64decode(data["image/png"])[:4] == b"\x89PNG"
    assert P.figure_to_png(fig) == before  # displaying does not change what is saved
    png = shell.display_formatter.formatters["image/png"]
    printer = png.lookup_by_type(Figure)
    assert P.show_figures_inline(shell) is True and png.lookup_by_type(Figure) is printer  # registered once


def test_show_figures_inline_keeps_a_format_chosen_before():
    shell = _kernel_stub()
    svg = shell.display_formatter.formatters["image/svg+xml"]
    svg.for_type(Figure, lambda fig: "<svg/>")
    assert P.show_figures_inline(shell) is True
    data, _ = shell.display_formatter.format(Figure(figsize=(1, 1)))
    assert "image/png" not in data and data["image/svg+xml"] == "<svg/>"


# ---------------------------------------------------------------------------------------------- task figures
def _rects(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_figure_box_prompt_masks_overlay_boxes_and_titles():
    from pixelllm.viz.tasks import SAM_MASK_COLOURS

    img = np.full((20, 30, 3), 0.5, np.float32)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:5, 3:6] = True
    masks[1, 10:12, 20:25] = True
    ex = {"image": img, "masks": masks, "boxes": np.array([[3.0, 2.0, 6.0, 5.0], [20.0, 10.0, 25.0, 12.0]]),
          "image_id": 7, "iou": 0.8}
    fig = P.figure_box_prompt_masks([ex, ex, ex, ex], cols=3, title="t")
    assert len(fig.axes) == 4 and fig._suptitle.get_text() == "t"
    ax = fig.axes[0]
    assert ax.get_title() == "image 7: IoU 0.80"
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown[3, 4], 0.45 * 0.5 + 0.55 * SAM_MASK_COLOURS[0], rtol=1e-6)
    np.testing.assert_allclose(shown[0, 0], [0.5, 0.5, 0.5])
    assert [tuple(np.round(r.get_bbox().bounds, 3)) for r in _rects(ax)] == [(3, 2, 3, 3), (20, 10, 5, 2)]
    assert ex["image"][3, 4, 0] == 0.5  # the caller's image is not painted over


def test_figure_referring_grid_boxes_and_titles():
    ex = {"image": _img(30, 40), "expression": "the red cube on the left of the blue ball", "iou": 0.5,
          "gt_box": [1.0, 2.0, 11.0, 12.0], "pred_box": [3.0, 4.0, 13.0, 14.0], "mask": np.ones((30, 40), bool)}
    fig = P.figure_referring([ex, {**ex, "mask": None}, ex], ncols=2)
    assert len(fig.axes) == 4 and not fig.axes[3].axison
    ax = fig.axes[0]
    gt, pred = _rects(ax)
    assert gt.get_bbox().bounds == (1.0, 2.0, 10.0, 10.0) and gt.get_linestyle() == "--"
    assert pred.get_bbox().bounds == (3.0, 4.0, 10.0, 10.0)
    assert "(IoU 0.50)" in ax.get_title() and "\n" in ax.get_title()  # wrapped to the panel, not cut
    assert ax.get_title().replace("\n", " ") == "“the red cube on the left of the blue ball” (IoU 0.50)"
    outline = [c for c in ax.collections if c.get_gid() == "mask_outline:0"]
    assert len(outline) == 1 and not [i for i in ax.images if i.get_gid() == "masks"]  # outline, no fill
    np.testing.assert_allclose(ax.images[0].get_array(), ex["image"])  # object colours untouched
    assert not [c for c in fig.axes[1].collections if c.get_gid() == "mask_outline:0"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ground-truth box", "predicted box",
                                                                  "predicted mask (outline)"]


def test_figure_matching_colours_matched_proposals():
    props = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]])
    fig = P.figure_matching(_img(40, 40), np.array([[0.0, 0.0, 10.0, 10.0]]), props, np.array([True, False, True]),
                            0.6)
    ax = fig.axes[0]
    assert ax.get_title() == "2/3 proposals with IoU ≥ 0.6 → prompts"
    green = [r for r in _rects(ax) if np.allclose(r.get_edgecolor(), (0.1, 0.8, 0.2, 1.0))]
    red = [r for r in _rects(ax) if np.allclose(r.get_edgecolor(), (0.9, 0.1, 0.1, 0.8))]
    assert sorted(r.get_bbox().bounds for r in green) == [(0.0, 0.0, 5.0, 5.0), (0.0, 0.0, 10.0, 10.0)]
    assert [r.get_bbox().bounds for r in red] == [(20.0, 20.0, 10.0, 10.0)]


def test_figure_region_captions_panels():
    import torch

    sample = {"images": torch.rand(3, 32, 32), "image_sizes": torch.tensor([24, 32])}
    res = [{"index": 0, "box_input": [2.0, 3.0, 12.0, 13.0], "text": "a red cube", "references": ["red cube"]},
           {"index": 0, "box_input": [1.0, 1.0, 5.0, 5.0], "text": "", "references": ["ball"]}]
    fig = P.figure_region_captions(res, [sample], n=5, ncols=3, title="t")
    assert len(fig.axes) == 2 and fig._suptitle.get_text() == "t"
    assert fig.axes[0].get_title() == "a red cube" and fig.axes[1].get_title() == "(empty)"
    assert fig.axes[0].get_xlabel() == "reference: red cube" and len(fig.legends) == 1
    assert fig.axes[0].images[0].get_array().shape[:2] == (24, 32)  # padding cropped
    with pytest.raises(ValueError, match="no results"):
        P.figure_region_captions([], [sample])


def test_figure_dense_captions_top_boxes_over_ground_truth(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    Image.fromarray(_img(30, 40)).save(tmp_path / "a.png")
    ds = SimpleNamespace(image_root=tmp_path, records=[
        {"image_id": 5, "file_name": "a.png", "regions": [{"bbox": [1.0, 2.0, 10.0, 5.0]}]}])
    det = {"image_id": "5", "boxes": [[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 9.0, 9.0], [3.0, 3.0, 4.0, 4.0]],
           "scores": [0.9, 0.5, 0.01], "captions": ["red cube", "", "ball"]}
    fig = P.figure_dense_captions([det], ds, top=5, min_score=0.1)
    ax = fig.axes[0]
    assert [r.get_bbox().bounds for r in _rects(ax)] == [(1.0, 2.0, 10.0, 5.0), (0.0, 0.0, 8.0, 8.0),
                                                         (2.0, 2.0, 7.0, 7.0)]
    assert [t.get_text() for t in ax.texts] == ["1", "2"]  # numbered on the image ...
    lst = fig.axes[1]  # ... and listed beside it in the same colours
    listed = [t for t in lst.texts if (t.get_gid() or "").startswith("caption_list:")]
    assert [t.get_text() for t in listed] == ["red cube 0.90", "(empty) 0.50"]
    np.testing.assert_allclose(listed[1].get_color(), _rects(ax)[2].get_edgecolor())
    assert ax.get_title() == "image 5" and len(fig.legends) == 1


def test_viz_imports_no_model_code():
    code = ("import sys, importlib\n"
            "for m in ('inputs', 'scene', 'trace', 'curves', 'output', 'tasks', 'viewer', 'animate'):\n"
            "    importlib.import_module('pixelllm.viz.' + m)\n"
            "bad = [m for m in sys.modules if m.startswith(('pixelllm.tasks', 'pixelllm.engine', 'pixelllm.modeling'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------- viewer
def _items():
    return [
        dict(image=_img(40, 40, 0), words=["▁a", "▁red", "▁cube", "</s>"], title="one",
             pred_points=np.array([[1.0, 2.0], [5.0, 6.0], [10.0, 12.0], [20.0, 30.0]]),
             gt_points=np.array([[0.0, 0.0], [6.0, 7.0], [np.nan, np.nan], [21.0, 31.0]])),
        dict(image=_img(30, 50, 1), words=["▁ball", "</s>"], title="two",
             pred_points=np.array([[3.0, 4.0, 8.0, 9.0], [1.0, 1.0, 2.0, 2.0]])),
    ]


def test_viewer_slider_and_dropdown_drive_rendering():
    from pixelllm.viz.viewer import TraceViewer

    v = TraceViewer(_items(), dpi=40, panel_size=2.0)
    assert v.slider.max == 3 and v.word_idx == 0 and v.current_word == "a"
    png0 = v.image.value
    assert png0[:4] == b"\x89PNG"
    v.slider.value = 2  # fires _on_word_change
    assert v.current_word == "cube" and "word 3/4" in v.figure._suptitle.get_text()
    np.testing.assert_allclose(v.current_points(), [[10.0, 12.0]])
    assert "3/4" in v.label.value and v.image.value != png0
    v.slider.value = 1
    np.testing.assert_allclose(v.current_points(), [[5.0, 6.0]])
    gt = [c for c in v.figure.axes[0].collections if c.get_gid() == "gt_point:current"][0]
    np.testing.assert_allclose(gt.get_offsets(), [[6.0, 7.0]])
    v.dropdown.value = 1  # fires _on_image_change: rewinds, resizes the slider
    assert v.slider.max == 1 and v.word_idx == 0 and v.current_word == "ball"
    np.testing.assert_allclose(v.current_points(), [[3.0, 4.0], [8.0, 9.0]])
    v.slider.value = 1
    assert v.current_word == "</s>"
    v.dropdown.value = 0
    assert v.slider.max == 3 and v.word_idx == 0
    fig = v.render(0, 3)  # direct, headless
    assert "word 4/4" in fig._suptitle.get_text()
    assert v.render_png(1, 0)[:4] == b"\x89PNG"


def test_viewer_rejects_bad_items():
    from pixelllm.viz.viewer import TraceViewer

    items = _items()
    del items[1]["pred_points"]
    with pytest.raises(ValueError, match=r"items\[1\]: missing field 'pred_points'"):
        TraceViewer(items)
    items = _items()
    items[0]["gt_points"] = items[0]["gt_points"][:2]
    with pytest.raises(ValueError, match=r"items\[0\]\['gt_points'\]: 2 rows for 4 words"):
        TraceViewer(items)


# ---------------------------------------------------------------------------------------------- GIF
def test_save_trace_gif_one_frame_per_word(tmp_path):
    from PIL import Image

    from pixelllm.viz.animate import save_trace_gif

    words = ["▁a", "▁red", "▁a", "▁red", "</s>"]  # repeated words: frames must still all be kept
    pts = np.array([[5.0, 5.0]] * 5)  # identical points too
    d = P.narrative_to_trace(LN_RECORD)
    out = save_trace_gif(tmp_path / "t.gif", _img(32, 32), words, pts, gt_trace=d["trace"], fps=4,
                         gt_normalized=True, gt_spans=d["spans"] + [(0, 0)] * 3, panel_size=2.0, dpi=40)
    assert out == tmp_path / "t.gif"
    with Image.open(out) as im:
        assert im.n_frames == 5
        assert im.info["duration"] == 250
        size = im.size
    fig = P.figure_word_step(_img(32, 32), words, pts, 0, gt_trace=d["trace"], gt_normalized=True,
                             panel_size=2.0, dpi=40)
    assert size == tuple(int(round(v)) for v in fig.get_size_inches() * 40)


# ---------------------------------------------------------------------------------------------- import cost
def test_import_viz_is_light():
    code = ("import sys, pixelllm.viz as v; assert 'matplotlib' not in sys.modules; "
            "assert callable(v.figure_word_trace); assert 'matplotlib' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
