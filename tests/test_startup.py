"""Start-up costs: an in-process worker reuses the model the launcher loaded, never a stale one."""
import shutil

from attribution.models import load_model


def test_same_unchanged_files_load_once_per_process(tiny_model, tmp_path):
    first = load_model(tiny_model)
    assert load_model(tiny_model, image_size=first.image_size) is first
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_model, copy)
    assert load_model(copy) is not first  # another handle


def test_changed_files_are_loaded_again(tmp_path):
    import keras
    path = str(tmp_path / "m.keras")

    def save(seed):
        keras.utils.set_random_seed(seed)
        keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                          keras.layers.Dense(2)]).save(path)

    save(0)
    first = load_model(path)
    save(1)
    second = load_model(path)
    assert second is not first and second.fingerprint != first.fingerprint
