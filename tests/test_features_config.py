import numpy as np
import pytest
from PIL import Image

from scanner import features
from scanner.config import ClusterConfig, ScanConfig, load_scan_config, override
from scanner.distances import hamming


def test_hashes_are_unsigned_64_bit_and_close_for_near_copies():
    import imagehash

    rng = np.random.default_rng(0)
    image = (np.kron(rng.integers(0, 256, size=(8, 8, 3)), np.ones((4, 4, 1)))).astype(np.uint8)
    phash, dhash = features.perceptual_hashes(image)
    assert 0 <= phash < 2**64 and 0 <= dhash < 2**64
    assert phash == int(str(imagehash.phash(Image.fromarray(image))), 16)  # imagehash's own hex form
    noisy = np.clip(image.astype(int) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    assert hamming(phash, features.perceptual_hashes(noisy)[0]) <= 6
    assert hamming(phash, features.perceptual_hashes(other)[0]) > 16


def test_degenerate_images_are_flagged():
    assert features.is_degenerate(np.zeros((32, 32, 3), np.uint8))
    assert features.is_degenerate(np.full((32, 32, 3), 200, np.uint8))
    assert not features.is_degenerate(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_content_addressed_files_are_written_once(tmp_path):
    data = features.png_bytes(np.zeros((4, 4, 3), np.uint8))
    first = features.write_content_addressed(data, tmp_path)
    second = features.write_content_addressed(data, tmp_path)
    assert first == second and (tmp_path / first[0]).read_bytes() == data
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [first[0].split("/")[-1]]


def test_toml_configuration_and_overrides(tmp_path):
    path = tmp_path / "scan.toml"
    path.write_text('model = "m"\n[sampling]\nsamples_per_prompt = 64\n[cluster]\nthreshold = 0.1\n')
    config = load_scan_config(path)
    assert config.model == "m" and config.sampling.samples_per_prompt == 64 and config.cluster.threshold == 0.1
    assert config.sampling.num_inference_steps == ScanConfig().sampling.num_inference_steps
    assert override(config.cluster, threshold=None, min_clique=7) == ClusterConfig(threshold=0.1, min_clique=7)


def test_ray_and_triage_settings_come_from_toml_and_are_checked(tmp_path):
    from scanner.errors import MemscanError

    path = tmp_path / "scan.toml"
    path.write_text('[ray]\naddress = "auto"\nworkers = 8\n[sampling]\ntriage = 0.1\ntriage_detector = "norm_align"\n')
    config = load_scan_config(path)
    assert (config.ray.address, config.ray.workers, config.ray.cpus_per_worker) == ("auto", 8, 1)
    assert config.sampling.triage_detector == "norm_align"
    # the run id hashes model, precision, prompts and sampler settings, never where the work ran:
    # a scan started in one process resumes on Ray and the other way round, but not in fp16
    from types import SimpleNamespace

    from scanner.generate import Prompt
    from scanner.scan import run_id_for

    model, prompts = SimpleNamespace(model_hash="f" * 64), [Prompt.from_text("a prompt")]
    run_id = run_id_for(model, "cpu-float32", prompts, config, "scan")
    assert run_id == run_id_for(model, "cpu-float32", prompts, ScanConfig(sampling=config.sampling), "scan")
    assert run_id != run_id_for(model, "cpu-float32", prompts, ScanConfig(), "scan")
    assert run_id != run_id_for(model, "cuda-float16", prompts, config, "scan")
    for bad, message in (('[ray]\ncpus_per_worker = 0\n', "cpus_per_worker"), ('[ray]\nnodes = 3\n', "unknown setting"),
                         ('[sampling]\ntriage_detector = "magic"\n', "triage_detector"),
                         ('[sampling]\ntriage_seeds = 1\n', "triage_seeds must be at least 2"),
                         ('[sampling]\nstop_early = true\n[cluster]\ncriterion = "component"\n', "stop_early needs the clique")):
        path.write_text(bad)
        with pytest.raises(MemscanError, match=message):
            load_scan_config(path)
