# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export QUAMBA_EDGE_CACHE ?= $(CURDIR)/.cache
# This project's machines keep the FSDD recordings beside the checkout (../shared, or /work/shared for a clone
# elsewhere); elsewhere calib/build_digits.py downloads them into the cache. Tests that need them skip without.
export QUAMBA_EDGE_FSDD ?= $(firstword $(wildcard $(CURDIR)/../shared/data/fsdd /work/shared/data/fsdd))
# Torch threads for the demo and the quality table (benchmarks that time things use one thread).
THREADS ?= 2

.PHONY: venv corpus demo test lint quality peers-wheel bench-cpu bench-native bench-peers bench-kernels bench-scale bench-adapool speech pretrain kws digits-data pretrain-real digits bench-speech trt-plugins jetson-image jetson-bench clean

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/pip.log) ..."
	@$(BIN)/pip install -c constraints-cpu.txt -e '.[dev]' > $(VENV)/pip.log 2>&1 || (tail -30 $(VENV)/pip.log; exit 1)
	@$(BIN)/pip install tensorrt-rtx >> $(VENV)/pip.log 2>&1 || echo "tensorrt-rtx did not install: the TensorRT parser tests will be skipped"
	$(BIN)/python -c "import torch, transformers, quamba_edge; print('torch', torch.__version__)"
	touch $@

venv: $(BIN)/.installed

corpus: venv
	$(BIN)/python calib/build_corpus.py

# Calibrate the bundled model with the naive and Quamba recipes, evaluate fp32 / naive / Quamba on the
# held-out novel, print the table; then build ONNX Runtime engines (fp32, int8) and time them.
demo: corpus
	$(BIN)/quamba-edge calibrate --model default --recipe naive --out out/naive --threads $(THREADS)
	$(BIN)/quamba-edge calibrate --model default --recipe quamba --out out/quamba --threads $(THREADS)
	$(BIN)/python benchmarks/quality.py --models default out/naive out/quamba --threads $(THREADS) \
		--max-samples $(DEMO_EVAL_SAMPLES) --out out/demo-quality.json
	$(BIN)/quamba-edge generate out/quamba --max-new-tokens 160
	$(BIN)/quamba-edge build-engine out/quamba --backend ort --target cpu --out out/engine-int8
	$(BIN)/quamba-edge build-engine default --precision fp32 --out out/engine-fp32
	$(BIN)/quamba-edge bench default out/engine-fp32 out/engine-int8 --device cpu --threads 1 --prompt-len 512 \
		--gen-len 128 --repeats 3 --json out/demo-bench.json

DEMO_EVAL_SAMPLES ?= 128

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check quamba_edge tests benchmarks calib

# The committed quality table (benchmarks/results/quality.json): every recipe, the whole held-out novel.
quality: corpus
	$(BIN)/python benchmarks/quality.py --all-recipes --max-samples 256 --threads $(THREADS) --markdown \
		--out benchmarks/results/quality.json
	$(BIN)/python benchmarks/quality.py --base default-mamba2 --all-recipes --samples 128 --max-samples 128 \
		--threads $(THREADS) --workdir out/quality-mamba2 --out benchmarks/results/quality_mamba2.json
	$(BIN)/python benchmarks/outliers.py --models default default-mamba2 --json benchmarks/results/outliers.json

# llama.cpp for benchmarks/peers.py: built from source once (about 7 min on 2 cores) into a cached wheel,
# never inside the tests. The sdist also carries llama.cpp's own gguf converter, unpacked next to it.
LLAMA_CPP_VERSION ?= 0.3.36
PEERS_DIR := $(QUAMBA_EDGE_CACHE)/peers
peers-wheel: venv
	mkdir -p $(PEERS_DIR)
	ls $(PEERS_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl > /dev/null 2>&1 || \
		$(BIN)/pip wheel --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(PEERS_DIR) > $(PEERS_DIR)/build.log 2>&1 || \
		(tail -30 $(PEERS_DIR)/build.log; exit 1)
	$(BIN)/pip install -q $(PEERS_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	test -d $(PEERS_DIR)/src || (mkdir -p $(PEERS_DIR)/src && $(BIN)/pip download -q --no-deps --no-binary :all: \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(PEERS_DIR) && tar xzf $(PEERS_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz \
		-C $(PEERS_DIR)/src --strip-components 1)

# CPU decode and prompt speed, one thread: ours (PyTorch eager, ONNX Runtime; fp32 and int8) side by side.
bench-cpu: corpus
	$(BIN)/python benchmarks/cpu_decode.py --out benchmarks/results/cpu_decode.json

# The native CPU decoder (csrc/cpu/native) against ONNX Runtime and PyTorch, every head and ISA path here.
bench-native: venv
	cd benchmarks && ../$(BIN)/python native_decode.py --all-isas --out results/native_decode.json

# Ours (ONNX Runtime and native) against llama.cpp (q8_0 and f32) on the same mamba-130m-shaped weights, one thread.
bench-peers: corpus peers-wheel
	$(BIN)/python benchmarks/peers.py --llama-src $(PEERS_DIR)/src --out benchmarks/results/peers.json

# The csrc/ kernels: each op's CPU twin against the PyTorch reference, and the bundled model end to end on
# them (needs out/quamba from `make demo`). On a GPU machine: bash benchmarks/gpu_check.sh.
# The public Mamba shapes (random weights) through calibrate, build-engine and bench, with each stage's peak
# memory (benchmarks/results/scale.json). Hours at 2.8b on 2 cores; SCALE_SHAPES picks a subset.
SCALE_SHAPES ?= mamba-130m mamba-370m mamba-790m mamba-1.4b mamba-2.8b
bench-scale: corpus
	$(BIN)/python benchmarks/scale.py --shapes $(SCALE_SHAPES) --out benchmarks/results/scale.json

bench-kernels: venv
	$(BIN)/python benchmarks/kernels.py --device cpu --repeats 5 --artifact out/quamba \
		--out benchmarks/results/kernels-cpu.json

# AdaPool's SNR benchmark (about 30 min on 2 cores): every pooling method at every k, fp32 and int8; the
# trained models and test sets go to out/adapool for `quamba-edge calibrate / build-engine / bench`.
bench-adapool: venv
	$(BIN)/python benchmarks/adapool_snr.py --threads $(THREADS) --out benchmarks/results/adapool_snr.json \
		--plot benchmarks/results/adapool_snr.png --save-dir out/adapool

# Speech: the synthetic (espeak-ng, flite) and real (asterisk-core-sounds-en-wav) sets under $(QUAMBA_EDGE_CACHE)/speech.
speech: venv
	$(BIN)/python calib/build_speech.py --variants 200 --pretrain 2000 --jobs 2 $(if $(filter 0,$(shell id -u)),--install,)

# Pre-train the tiny encoder both ways (same seed, same steps, one thread each, side by side; ~25 min).
pretrain: speech
	$(BIN)/python benchmarks/ccc_pretrain.py --objective wav2vec2 --steps 1000 --out out/pretrain & \
	$(BIN)/python benchmarks/ccc_pretrain.py --objective ccc --steps 1000 --out out/pretrain; wait
	$(BIN)/python benchmarks/ccc_pretrain.py --summarize out/pretrain --json benchmarks/results/ccc_pretrain.json

# Keyword spotters, scored on the real clips, fp32 and int8 (~2.5 h on 2 cores). End to end: the tiny
# encoder from scratch and the KWS head trained together, every pooling (~26 CPU-min each), int8 with the
# default recipe and the all-int8 ablation. Frozen: the ccc pre-trained encoder frozen, a head trained on it.
KWS_E2E = --encoder scratch=scratch --train-conv --train 3000 --epochs 6 --lr 1e-3 --encoder-lr 1e-3 --int8-conv \
	--save out/kws
KWS_FROZEN = --train 3000 --epochs 12 --lr 2e-3 --encoder-lr 0 --int8-conv --save out/kws
kws: speech
	$(BIN)/python benchmarks/kws.py $(KWS_E2E) --pools adapool cls --out out/kws/scratch-a.json & \
	$(BIN)/python benchmarks/kws.py $(KWS_E2E) --pools max avg --out out/kws/scratch-b.json; wait
	$(BIN)/python benchmarks/kws.py --encoder ccc=out/pretrain/ccc $(KWS_FROZEN) --out out/kws/ccc-frozen.json
	$(BIN)/python benchmarks/kws.py --merge out/kws/scratch-a.json out/kws/scratch-b.json out/kws/ccc-frozen.json \
		--json benchmarks/results/kws_synthetic.json --plot benchmarks/results/kws_synthetic.png

# Issue 18: the digit spotter on real speech (FSDD leave-one-speaker-out, the Asterisk English speaker): end to end
# with the channel recipe (reversed takes as unknown, a random equaliser, 100 synthetic takes per digit: about 20
# CPU-min a fold) and its ablations, the first recipe ("base") end to end, every pooling x 3 seeds on a frozen
# encoder, fp32 and int8, and the pre-training comparison (~8 h on 2 cores; each features cache is 3.7 GB in
# out/digits). See benchmarks/digits.py.
digits-data: venv
	$(BIN)/python calib/build_digits.py
pretrain-real: digits-data
	$(BIN)/python benchmarks/ccc_pretrain.py --objective wav2vec2 --steps 2000 --data asterisk --out out/pretrain-asterisk & \
	$(BIN)/python benchmarks/ccc_pretrain.py --objective ccc --steps 2000 --data asterisk --out out/pretrain-asterisk; wait
	$(BIN)/python benchmarks/ccc_pretrain.py --summarize out/pretrain-asterisk --json benchmarks/results/ccc_pretrain_real.json
DIGITS = $(BIN)/python benchmarks/digits.py
E2E = $(DIGITS) grid --protocol end-to-end --encoder scratch=scratch --pools adapool --seeds 0 --save
BASE = --reversed-unknown 0 --channel-eq 0 --synthetic 0
FROZEN_FOLDS = --folds george jackson lucas
digits: pretrain-real speech
	$(E2E) --folds jackson george lucas --out out/digits/e2e-channel-a.json & \
	$(E2E) --synthetic 0 --folds jackson --out out/digits/e2e-rev-eq-jackson.json; \
	$(E2E) --folds nicolas yweweler --out out/digits/e2e-channel-b.json; wait
	$(E2E) $(BASE) --folds george jackson lucas yweweler --out out/digits/e2e-base.json
	$(E2E) --steps 900 --folds george jackson --out out/digits/e2e-channel-900steps-a.json & \
	$(E2E) --steps 900 --folds lucas nicolas yweweler --out out/digits/e2e-channel-900steps-b.json; wait
	$(E2E) --steps 900 --copies 4 --folds george jackson --out out/digits/e2e-channel-900steps-x4-a.json & \
	$(E2E) --steps 900 --copies 4 --folds lucas nicolas yweweler --out out/digits/e2e-channel-900steps-x4-b.json; wait
	$(DIGITS) features --encoder scratch=scratch $(BASE)
	$(DIGITS) features --encoder wav2vec2=out/pretrain-asterisk/wav2vec2 $(BASE)
	$(DIGITS) features --encoder ccc=out/pretrain-asterisk/ccc $(BASE)
	$(DIGITS) grid --encoder scratch=scratch $(BASE) $(FROZEN_FOLDS) --int8-seeds 0 --save --out out/digits/grid-frozen.json
	$(DIGITS) few --encoder scratch=scratch $(BASE) --labels 5 20 50 --out out/digits/few-scratch.json & \
	$(DIGITS) few --encoder wav2vec2=out/pretrain-asterisk/wav2vec2 $(BASE) --labels 5 20 50 --out out/digits/few-wav2vec2.json; wait
	$(DIGITS) few --encoder ccc=out/pretrain-asterisk/ccc $(BASE) --labels 5 20 50 --out out/digits/few-ccc.json
	$(DIGITS) merge out/digits/e2e*.json out/digits/grid-frozen*.json out/digits/few-*.json \
		--json benchmarks/results/kws.json --plot benchmarks/results/kws.png

bench-speech: venv
	$(BIN)/python benchmarks/speech_latency.py --kws out/kws/scratch-end-to-end-adapool --out benchmarks/results/speech_latency.json
	$(BIN)/python benchmarks/cpu_int8_ceiling.py --out benchmarks/results/cpu_int8_ceiling.json

# libquamba_edge_trt.so (TensorRT plugins + CUDA kernels) where CUDA and the TensorRT headers exist (the
# Jetson image; CUDA_ARCH=90 for H100/H200). build-engine --backend tensorrt finds it in build/trt.
CUDA_ARCH ?= 87
trt-plugins:
	cmake -S csrc -B build/trt -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH) && cmake --build build/trt -j

# The JetPack 6 image (Dockerfile.jetson): on a Jetson, or cross-built from x86 with buildx and QEMU.
jetson-image:
	docker buildx build --platform linux/arm64 -f Dockerfile.jetson -t quamba-edge:jetson --load .

# On the Jetson (from a checkout, outside docker): the one-command benchmark of benchmarks/jetson.sh.
jetson-bench: venv
	PATH=$(CURDIR)/$(BIN):$$PATH bash benchmarks/jetson.sh

clean:
	rm -rf out .pytest_cache
