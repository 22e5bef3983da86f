# sppo-nemo in the NeMo Framework container: the one NGC image that holds Transformer Engine,
# megatron-core and vLLM together.
#
#   nvcr.io/nvidia/nemo:26.06  Python 3.12, PyTorch 2.12.0a0, CUDA 13.2.1, Transformer Engine 2.16,
#                              megatron-core 0.18.0, vLLM 0.20.1, transformers 5.8.1, NeMo-Run 0.10.0
#                              (Megatron-Bridge's software-versions table for 26.06)
#
# The project goes in without touching any of those (scripts/image_install.sh): `--no-deps`, then
# only the requirements the image lacks, under a constraints file pinning every installed
# distribution at its version (those installed from a URL or a local wheel, as vLLM is, included)
# and under the image's own PIP_CONSTRAINT, which is kept: pip may add packages but never move one,
# and the build fails, saying which, if a requirement cannot be met that way or anything moved.
# On Python 3.12 the megatron extra allows megatron-core 0.18 and 0.19, what the container-parity
# tier passes (0.17+ need 3.12; on Python 3.11 the extra stays on 0.16.1). tests/integration/test_image_install.py rehearses the
# install in an environment built to look like the image.
#
#   docker build -t sppo-nemo:latest .
#   enroot import -o sppo-nemo.sqsh dockerd://sppo-nemo:latest      # for pyxis
#   srun --container-image=$PWD/sppo-nemo.sqsh --container-mounts=$PWD:$PWD --container-workdir=$PWD \
#        sppo-run recipes/smollm2_sppo_3iter_vllm.yaml
FROM nvcr.io/nvidia/nemo:26.06
WORKDIR /opt/sppo-nemo
# PIP_CONSTRAINT is left as the image sets it (NGC's pins of what it was built with).
ENV SPPO_VLLM_PYTHON=python
COPY pyproject.toml README.md ./
COPY sppo_nemo ./sppo_nemo
COPY recipes ./recipes
COPY launchers ./launchers
COPY scripts/image_install.sh ./scripts/image_install.sh
RUN bash scripts/image_install.sh
# Build-time smoke: the engines import against this image's torch, and the shipped recipes validate.
RUN python -c "import torch, transformer_engine, megatron.core, vllm, transformers; \
print('torch', torch.__version__, '| TE', transformer_engine.__version__, '| megatron-core', \
megatron.core.__version__, '| vLLM', vllm.__version__, '| transformers', transformers.__version__)" \
 && sppo-run recipes/smollm2_sppo_3iter.yaml --validate > /dev/null \
 && sppo-run recipes/smollm2_sppo_3iter_vllm.yaml --validate > /dev/null \
 && sppo-run recipes/gpu/smollm2_sppo_3iter_megatron.yaml --validate > /dev/null
WORKDIR /workspace
ENTRYPOINT ["sppo-run"]
CMD ["/opt/sppo-nemo/recipes/smollm2_sppo_3iter.yaml"]
