"""Every method as paths and weights over the engine's packed model calls (see the package
docstring): ``explain`` dispatches on ``MethodConfig.attribution``."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from attribution.baselines import make_baseline, seed_for
from attribution.integrated_gradients import (
    Attribution,
    IntegratedGradients,
    Request,
    checked,
)
from attribution.methods import guided, perturbation, xrai
from attribution.methods.blur import BlurPath
from attribution.methods.cam import gradcam
from attribution.methods.config import CAMS, PIXEL_MAPS, XRAI_BASELINES, MethodConfig
from attribution.methods.paths import Curve, integrate, weighted_gradients
from attribution.methods.results import Explanation, combine, explanation
from attribution.targets import Targets


def explain(
    engine: IntegratedGradients,
    images: Sequence[np.ndarray],
    seed_keys: Sequence[str],
    targets: Targets,
    config: MethodConfig,
    references: np.ndarray | None = None,
    cam=None,
) -> list[list[Explanation]]:
    """Explanations of every image, one list per image in target rank order.

    ``seed_keys`` (e.g. content hashes) seed the noise; ``references`` [K, H, W, 3] are the
    expected-gradients baselines; ``cam`` (an ``attribution.methods.cam.Cam`` of the model's
    --layer) computes gradcam and gradcam_plus_plus.
    """
    if not len(images):
        return []
    images = [np.asarray(image, np.float32) for image in images]
    name = config.attribution
    if name in PIXEL_MAPS:
        return _pixel_maps(engine, images, seed_keys, targets, config, cam)
    if name in ("ig", "xrai"):
        kinds = config.baselines if name == "ig" else XRAI_BASELINES
        groups = _averaged(
            engine,
            images,
            [
                [make_baseline(k, x, key=s, seed=config.seed) for k in kinds]
                for x, s in zip(images, seed_keys)
            ],
            targets,
        )
    elif name == "smoothgrad":
        groups = _smoothgrad(engine, images, seed_keys, targets, config)
    elif name == "expected_gradients":
        groups = _expected_gradients(engine, images, seed_keys, targets, config, references)
    elif name == "blur_ig":
        groups = _blur_ig(engine, images, targets, config)
    else:
        groups = _guided_ig(engine, images, seed_keys, targets, config)
    label = config.baseline_label
    out = []
    for i, group in enumerate(groups):
        rows = []
        masks = xrai.segments(images[i]) if name == "xrai" else None  # shared by its targets
        for result in group:
            extras = {}
            if masks is not None:
                heatmap, ranks, regions = xrai.rank_regions(result.attributions, masks)
                extras = {
                    "xrai_heatmap": heatmap,
                    "xrai_ranks": ranks,
                    "xrai_region_ranks": regions,
                }
            rows.append(explanation(dataclasses.replace(result, key=i), name, label, **extras))
        out.append(rows)
    return out


def _pixel_maps(engine, images, seed_keys, targets, config, cam) -> list[list[Explanation]]:
    """Grad-CAM, occlusion and RISE: no path, no completeness (results.pixel_map)."""
    name, label = config.attribution, config.baseline_label
    if name in CAMS:
        if cam is None:
            raise ValueError(f"attribution {name!r} needs the model's layers (a Keras model)")
        groups = [[(r, None) for r in g] for g in gradcam(engine, cam, images, targets)]
    else:
        baselines = [
            make_baseline(config.baselines[0], x, key=s, seed=config.seed)
            for x, s in zip(images, seed_keys)
        ]
        if name == "occlusion":
            found = perturbation.occlusion(
                engine, images, baselines, targets, config.occlusion_window, config.occlusion_stride
            )
            groups = [[(r, None) for r in g] for g in found]
        else:
            groups = perturbation.rise(
                engine,
                images,
                baselines,
                targets,
                config.rise_masks,
                config.rise_grid,
                config.rise_p,
                config.seed,
            )
    return [
        [
            explanation(
                dataclasses.replace(r, key=i), name, label, split_half_correlation=correlation
            )
            for r, correlation in group
        ]
        for i, group in enumerate(groups)
    ]


# -- straight-line methods: sets of engine Requests ---------------------------------------
def _averaged(engine, images, baselines, targets) -> list[list[Attribution]]:
    """IG from each image's baselines, averaged per (image, target), worst error reported."""
    requests = [
        Request((i, k), x, b)
        for i, (x, bs) in enumerate(zip(images, baselines))
        for k, b in enumerate(bs)
    ]
    parts = defaultdict(list)
    for result in engine.attribute(requests, targets):
        parts[(result.key[0], result.target)].append(result)
    return _per_image(parts, len(images), engine)


def noisy_copies(image: np.ndarray, seed_key: str, config: MethodConfig) -> np.ndarray:
    """[noise_samples, H, W, C] copies of ``image`` plus Gaussian noise of std noise_sigma
    (the model's input range is [0, 1]), seeded by (seed, seed_key): reruns reproduce."""
    rng = np.random.default_rng(seed_for(f"smoothgrad:{seed_key}", config.seed))
    noise = rng.normal(0.0, config.noise_sigma, (config.noise_samples, *image.shape))
    return (image[None].astype(np.float64) + noise).astype(np.float32)


def _smoothgrad(engine, images, seed_keys, targets, config) -> list[list[Attribution]]:
    scores = engine.scores(np.stack(images))
    chosen = [targets.select(s) for s in scores]
    copies = [noisy_copies(x, s, config) for x, s in zip(images, seed_keys)]
    bases = [
        [make_baseline(k, x, key=s, seed=config.seed) for k in config.baselines]
        for x, s in zip(images, seed_keys)
    ]
    parts = defaultdict(list)
    # the target is the original image's class: noisy copies may predict another one
    for c in sorted({c for cs in chosen for c in cs}):
        requests = [
            Request((i, j, k), copy, b)
            for i in range(len(images))
            if c in chosen[i]
            for j, copy in enumerate(copies[i])
            for k, b in enumerate(bases[i])
        ]
        for result in engine.attribute(requests, Targets("class", c)):
            parts[(result.key[0], c)].append(result)
    groups = []
    for i, cs in enumerate(chosen):
        predicted = int(np.argmax(scores[i]))
        groups.append(
            [
                dataclasses.replace(
                    combine(
                        parts[(i, c)],
                        target_score=float(scores[i, c]),
                        atol=engine.atol,
                        tolerance=engine.tolerance,
                        worst=False,
                    ),
                    predicted_class=predicted,
                    predicted_score=float(scores[i, predicted]),
                )
                for c in cs
            ]
        )
    return groups


def _expected_gradients(engine, images, seed_keys, targets, config, references):
    if references is None or not len(references):
        raise ValueError("expected_gradients needs baseline images sampled from the input set")
    references = np.asarray(references, np.float32)
    if config.expected_gradients_alpha == "quadrature":
        return _averaged(engine, images, [list(references)] * len(images), targets)
    k = len(references)
    scores = engine.scores(np.concatenate([np.stack(images), references]))
    image_scores, reference_scores = scores[: len(images)], scores[len(images) :]
    keys, rows = [], []
    for i, (x, seed_key) in enumerate(zip(images, seed_keys)):
        rng = np.random.default_rng(seed_for(f"expected_gradients:{seed_key}", config.seed))
        alphas = rng.uniform(0.0, 1.0, k)  # one per (image, reference) pair, as the paper
        for target in targets.select(image_scores[i]):
            keys.append((i, target))
            for r, alpha in zip(references, alphas):
                diff = x.astype(np.float64) - r
                rows.append(
                    (target, lambda r=r, a=alpha, d=diff: ((r + a * d).astype(np.float32), d / k))
                )
    _, products = weighted_gradients(engine, rows)
    groups = [[] for _ in images]
    for n, (i, target) in enumerate(keys):
        fb = float(reference_scores[:, target].mean())
        groups[i].append(
            checked(
                key=i,
                target=target,
                image_scores=image_scores[i],
                start_score=fb,
                start_predicts_target=np.mean(np.argmax(reference_scores, axis=1) == target) > 0.5,
                attributions=np.sum(products[n * k : (n + 1) * k], axis=0),
                atol=engine.atol,
                tolerance=engine.tolerance,
                method="random_alpha",
                steps=1,
                evaluations=k,
                path_alphas=[0.0, 1.0],
                path_scores=[fb, image_scores[i, target]],
            )
        )
    return groups


# -- curved paths: explicit points through engine.gradients -------------------------------
def _blur_ig(engine, images, targets, config) -> list[list[Attribution]]:
    paths = [BlurPath(x, config.max_blur_sigma) for x in images]
    starts = np.stack([p.blurred(config.max_blur_sigma).astype(np.float32) for p in paths])
    scores = engine.scores(np.concatenate([np.stack(images), starts]))
    image_scores, start_scores = scores[: len(images)], scores[len(images) :]
    curves = []
    for i, path in enumerate(paths):
        for target in targets.select(image_scores[i]):
            curves.append(
                Curve(
                    key=i,
                    target=target,
                    point=path,
                    image_scores=image_scores[i],
                    start_score=float(start_scores[i, target]),
                    start_predicts_target=int(np.argmax(start_scores[i])) == target,
                )
            )
    results = integrate(engine, curves)
    groups = [[] for _ in images]
    for result in results:
        groups[result.key].append(result)
    return groups


def _guided_ig(engine, images, seed_keys, targets, config) -> list[list[Attribution]]:
    bases = [
        [make_baseline(k, x, key=s, seed=config.seed) for k in config.baselines]
        for x, s in zip(images, seed_keys)
    ]
    n = len(images)
    flat = [b for bs in bases for b in bs]
    scores = engine.scores(np.concatenate([np.stack(images), np.stack(flat)]))
    image_scores = scores[:n]
    base_scores = scores[n:].reshape(n, len(config.baselines), -1)
    jobs, paths, path_targets = [], [], []
    for i, x in enumerate(images):
        for target in targets.select(image_scores[i]):
            for k, b in enumerate(bases[i]):
                jobs.append((i, target, k))
                paths.append(guided.GuidedPath(x, b, engine.steps, config.guided_fraction))
                path_targets.append(target)
    curves = guided.run(engine, paths, path_targets)
    parts = defaultdict(list)
    for (i, target, k), path, curve in zip(jobs, paths, curves):
        parts[(i, target)].append(
            checked(
                key=i,
                target=target,
                image_scores=image_scores[i],
                start_score=float(base_scores[i, k, target]),
                start_predicts_target=int(np.argmax(base_scores[i, k])) == target,
                attributions=path.attributions,
                atol=engine.atol,
                tolerance=engine.tolerance,
                method="guided",
                steps=path.steps,
                evaluations=len(curve),
                path_alphas=np.arange(len(curve) + 1) / max(len(curve), 1),
                path_scores=curve + [float(image_scores[i, target])],
            )
        )
    return _per_image(parts, len(images), engine)


def _per_image(parts: dict, count: int, engine) -> list[list]:
    """{(image, target): [Attribution, ...]} -> one list per image (targets in insertion
    order, by rank); several parts of one target combine with the worst part's error."""
    groups = [[] for _ in range(count)]
    for (i, _), group in parts.items():
        groups[i].append(
            group[0]
            if len(group) == 1
            else combine(
                group,
                target_score=group[0].target_score,
                atol=engine.atol,
                tolerance=engine.tolerance,
                worst=True,
            )
        )
    return groups
