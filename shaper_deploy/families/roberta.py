"""RoBERTa and the models built on it (XLM-R, CamemBERT): BERT's layers and config fields;
no token types fed (its one-row table is added to every token), positions numbered from
``pad_token_id + 1`` with padding at ``pad_token_id``, ``<s>``/``</s>``/``<mask>``, and the
MLM head under ``lm_head`` with a fixed GELU."""

from . import Family

ROBERTA = Family(
    name="roberta", model_types=("roberta", "xlm-roberta", "camembert"),
    class_prefix={"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert"},
    inputs=("input_ids", "attention_mask"), prefix="roberta.",
    top_names={"embeddings.word_embeddings": "embeddings.word",
               "embeddings.position_embeddings": "embeddings.position",
               "embeddings.token_type_embeddings": "embeddings.token_type",
               "embeddings.LayerNorm": "embeddings.norm",
               "pooler.dense": "pooler.dense",
               "lm_head.dense": "mlm_head.transform",
               "lm_head.layer_norm": "mlm_head.norm"},
    mlm_bias="lm_head.bias", decoder="lm_head.decoder.weight",
    ignored=r"embeddings\.(position_ids|token_type_ids)|lm_head\.decoder\.bias",
    special_tokens={"cls": "<s>", "sep": "</s>", "mask": "<mask>", "pad": "<pad>"},
    padding_positions=True, fixed_mlm_act="gelu")
