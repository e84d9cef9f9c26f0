"""The web app: upload a clip, see the teacher and the student side by side.

Layout and wiring only; what a request does lives in `deepfake_kd.serving` (handler, loading,
texts), the figures in `deepfake_kd.serving.plots`. `python app.py` serves it on
http://127.0.0.1:7860 (a Hugging Face Space sets GRADIO_SERVER_NAME itself). Models load once,
here, at start-up; see README "Using the app".
"""

from __future__ import annotations

import ctypes
import os
import signal

import gradio as gr

from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.limits import AppLimits
from deepfake_kd.pipeline.faces import FaceDetector
from deepfake_kd.roles import DEFAULT_THRESHOLD, ROLES
from deepfake_kd.serving.examples import example_clips
from deepfake_kd.serving.explaining import EXPLAIN_IDLE, Explainer
from deepfake_kd.serving.handler import Analyzer, refuse_links
from deepfake_kd.serving.loading import AppModels, load_app_models
from deepfake_kd.serving.texts import banner_markdown

TITLE = "deepfake-kd: a teacher and its distilled student"
INTRO = (
    "# deepfake-kd — teacher vs student\n"
    "Upload a short clip with a face. Frames are sampled, faces are found once, and both "
    "models score the same face crops: the **teacher** (Cross Efficient ViT) and the tiny "
    "**student** distilled from it. A model calls the clip FAKE when any person's mean fake "
    "probability exceeds the threshold.")
CSS = """
#banner { border: 2px solid #e8590c; border-radius: 8px; padding: 4px 14px;
          background: #fff4e6; }
.model-panel { border: 1px solid var(--border-color-primary); border-radius: 8px;
               padding: 2px 14px; }
.verdict { display: inline-block; font-size: 1.5em; font-weight: 700; color: white;
           padding: 2px 14px; border-radius: 6px; margin: 4px 0; }
.verdict-fake { background: #c92a2a; }
.verdict-real { background: #2b8a3e; }
.verdict-none { background: #868e96; }
#summary { min-height: 3em; }
#crops .caption-label { white-space: normal; max-width: 94%; }  /* both scores, unclipped */
#explanations .caption-label { white-space: normal; max-width: 94%; }
"""
MODELS_BUSY = "models"  # the concurrency group of every event that runs the models


def build_demo(app_models: AppModels, *, detector: FaceDetector | None = None,
               limits: AppLimits = AppLimits(), examples: list | None = None) -> gr.Blocks:
    """The page for these models; `examples` are clip paths (default: generated ones)."""
    analyzer = Analyzer(app_models, detector=detector, limits=limits)
    clips = example_clips() if examples is None else examples
    banner = banner_markdown(app_models)
    # Uploads, gallery images and result files all live in Gradio's cache folder
    # (GRADIO_TEMP_DIR, default <tmp>/gradio): deleted once `cache_ttl_s` old, and on shutdown.
    with gr.Blocks(title=TITLE, delete_cache=(limits.cache_sweep_s, limits.cache_ttl_s)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(banner, visible=bool(banner), elem_id="banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                video = refuse_links(gr.Video(label="Clip", sources=["upload"], height=280,
                                              elem_id="clip"))
                frames = gr.Slider(1, limits.analysis.max_frames, value=limits.default_frames,
                                   step=1, label="Frames to sample",
                                   info="spread evenly over the clip")
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01,
                                      label="Threshold",
                                      info="FAKE when a person's mean p(fake) exceeds it")
                button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                if clips:
                    gr.Examples([[str(clip), limits.default_frames, DEFAULT_THRESHOLD]
                                 for clip in clips],
                                inputs=[video, frames, threshold], cache_examples=False,
                                label="Examples (made from a public-domain NASA photo)")
            with gr.Column(scale=3, min_width=400):
                summary = gr.Markdown("Upload a clip and press **Analyze**.", elem_id="summary")
                with gr.Row(equal_height=True):
                    panels = {f"panel_{role}": gr.Markdown(analyzer.idle_panel(role),
                                                           elem_id=f"panel-{role}",
                                                           elem_classes=["model-panel"])
                              for role in ROLES}
                cost = gr.Plot(label="Parameters and inference time", elem_id="cost-chart")
        probability = gr.Plot(label="Fake probability per frame", show_label=False,
                              elem_id="probability-chart")
        gallery = gr.Gallery(label="Face crops the models saw (with each model's p(fake))",
                             columns=6, height="auto", object_fit="contain",
                             elem_id="crops")
        result_file = gr.File(label="Full result (JSON)", elem_id="result-json")
        outputs = {"summary": summary, **panels, "probability": probability, "cost": cost,
                   "gallery": gallery, "json": result_file}
        analysis = button.click(analyzer.handle, inputs=[video, frames, threshold],
                                outputs=[outputs[name] for name in Analyzer.OUTPUTS],
                                api_name="analyze", concurrency_limit=limits.concurrency,
                                concurrency_id=MODELS_BUSY)
        explain_section(Explainer(app_models, analyzer.recent, analyzer.files), button, analysis,
                        result_file, limits)
    demo.queue(max_size=limits.max_queue, default_concurrency_limit=limits.concurrency)
    return demo


def explain_section(explainer: Explainer, button: gr.Button, analysis, result_file: gr.File,
                    limits: AppLimits) -> None:
    """"Where the models look": cleared when Analyze is pressed, computed once the verdicts are
    shown (chained on the analysis' success, so it never delays them), and for a chosen frame.
    Each request first says what is being computed (outside the queue, at once), then runs in
    the models' concurrency group: one model run at a time, analyses and heatmaps alike. The
    page's result file says which analysed clip to explain."""
    gr.Markdown("## Where the models look")
    status = gr.Markdown(EXPLAIN_IDLE, elem_id="explain-status")
    with gr.Row(equal_height=True):
        at = gr.Number(0, label="Frame at (seconds)", minimum=0, elem_id="explain-time",
                       info="every face of the sampled frame nearest to this time")
        explain_frame = gr.Button("Explain this frame", elem_id="explain-frame")
    pictures = gr.Gallery(label=" | ".join(["crop", *explainer.app_models.models]),
                          columns=1 + len(explainer.app_models.models),
                          height="auto", object_fit="contain", elem_id="explanations")
    outputs = {"explain_status": status, "explanations": pictures}
    heavy = dict(outputs=[outputs[name] for name in Explainer.OUTPUTS],
                 concurrency_id=MODELS_BUSY, concurrency_limit=limits.concurrency)
    quick = dict(outputs=status, queue=False, api_visibility="private")
    button.click(explainer.cleared, outputs=[status, pictures], queue=False,
                 api_visibility="private")
    analysis.success(explainer.pending_top, inputs=result_file, **quick).success(
        explainer.top, inputs=result_file, api_name="explain", **heavy)
    explain_frame.click(explainer.pending_frame, inputs=[result_file, at], **quick).success(
        explainer.frame, inputs=[result_file, at], api_name="explain_frame", **heavy)


def launch(demo: gr.Blocks, limits: AppLimits = AppLimits(), **kwargs):
    """Serve `demo` with the upload limit; 127.0.0.1 unless GRADIO_SERVER_NAME says otherwise."""
    kwargs.setdefault("server_name", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    return demo.launch(max_file_size=limits.analysis.max_file_bytes, css=CSS,
                       theme=gr.themes.Soft(), **kwargs)


def bound_heap() -> None:
    """At most two malloc arenas: glibc otherwise gives each request thread an arena of its own
    and keeps what it freed there, so RSS creeps up with the number of threads that ever served
    a request (the load test with the tiny models: +490 MB over RSS at rest by default, +340 MB
    with two arenas). The mmap threshold is left alone: fixing it at 1 MB saved another 100 MB
    but made the teacher about 15% slower (fresh pages for every activation)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, musl): nothing to tune
    libc.mallopt(-8, 2)  # M_ARENA_MAX


def stop_on_sigint() -> None:
    """SIGINT raises KeyboardInterrupt again, so Gradio deletes its uploads and results on the
    way out. Why: a shell that starts the app in the background (`python app.py &`, nohup, CI
    scripts) hands it SIGINT ignored, and Python then keeps ignoring it; `kill -INT` (how the
    load test stops a server) did nothing, the server had to be killed and its files stayed."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    bound_heap()  # before any request thread exists
    stop_on_sigint()
    try:
        limits = AppLimits.from_env()  # README "Using the app": the variables that tune them
        app_models = load_app_models()
    except DeepfakeKDError as exc:
        raise SystemExit(f"error: {exc}") from None
    demo = build_demo(app_models, detector=FaceDetector(), limits=limits)
    launch(demo, limits)


if __name__ == "__main__":
    main()
