# Two commands for a new machine: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Chalice sets the Lambda runtime from the packaging interpreter, and python3.11 functions can
# no longer be created: insist on Python >= 3.12 (.python-version selects 3.13.0 under pyenv).
FIND_PYTHON := for p in python3 python3.13 python3.12; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    command -v $$p; break; fi; done

# This machine's pip config lists local mirror folders that do not exist; pip warns about each.
QUIET_PIP := { grep -v "^WARNING: Location 'file:" || true; }

.PHONY: help setup demo test lint browser sandbox bench bench-fanout bench-memory faults soak clean package deploy destroy

help:
	@echo "make demo     set up .venv, then run the end-to-end demo on the local sandbox"
	@echo "make test     set up .venv, then lint (ruff, mypy) and run the whole test suite"
	@echo "make lint     ruff check, ruff format --check and mypy only"
	@echo "make browser  install Debian's chromium for the link page test, when missing and root"
	@echo "make sandbox  start the DirectLink sandbox + AWS emulator; writes .vifgate-sandbox.env to source"
	@echo "make bench    a steady cycle, 200 targets x 25 VIFs, vs its floor and a naive loop; calls per idle cycle (~5 min)"
	@echo "make bench-fanout  the fan-out at 100/1,000/5,000 targets and the workers and memory a 1-minute schedule needs"
	@echo "make bench-memory  peak memory and CPU of a cycle over 10/100/200 targets, old vs current"
	@echo "make faults   kill the poller at four points of a confirm, break answers; count what survives"
	@echo "make soak     100 cycles under throttling, 5xx, SQS refusals, kills and 4 pollers; check every confirm and event"
	@echo "make package STAGE=dev|prod [REGION=eu-west-1]  chalice package + infra template into build/<stage>/, cfn-lint"
	@echo "make deploy STAGE=... BUCKET=... [ALARM_TOPIC=arn] [REGION=...]  aws cloudformation package + deploy"
	@echo "make destroy STAGE=... [REGION=...]  delete the stack (the ledger table is retained)"
	@echo "make clean    remove .venv and caches"

$(STAMP): pyproject.toml requirements.txt
	@py="$$($(FIND_PYTHON))"; \
	if [ -z "$$py" ]; then \
	  echo "error: VIF Gatekeeper needs Python >= 3.12 (Lambda no longer accepts python3.11)." >&2; \
	  echo "       Install 3.13 (e.g. 'pyenv install 3.13.0'; .python-version selects it) and rerun." >&2; \
	  exit 1; fi; \
	echo "Setting up $(VENV) with $$py ($$($$py --version))"; \
	rm -rf $(VENV) && $$py -m venv $(VENV) && \
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP) && \
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vifgate demo

test: lint $(STAMP) browser
	$(PY) -m pytest -n 2 -q

# The link page test drives Debian's chromium (a test tool's own browser download is not possible
# here). CI starts as root on a clean machine: install it there; elsewhere say once why the test skips.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): the browser test will skip"; \
	  exit 0; fi; \
	echo "Installing Debian's chromium for the link page test (apt-get)"; \
	log=$$(mktemp); export DEBIAN_FRONTEND=noninteractive; \
	if apt-get install -y -q --no-install-recommends chromium >"$$log" 2>&1 || \
	   { apt-get update -q >>"$$log" 2>&1 && apt-get install -y -q --no-install-recommends chromium >>"$$log" 2>&1; }; then \
	  echo "Installed $$($(CHROMIUM) --version 2>/dev/null)"; \
	else \
	  tail -n 5 "$$log"; echo "note: apt-get could not install chromium: the browser test will skip"; \
	fi; rm -f "$$log"

# Lint, format and types first: a minute of pytest is wasted on code that does not pass them.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

sandbox: $(STAMP)
	$(VENV)/bin/vifgate sandbox

faults: $(STAMP)
	$(PY) bench/fault_run.py

soak: $(STAMP)
	$(PY) bench/soak.py

bench: $(STAMP)
	$(PY) bench/scale.py

bench-fanout: $(STAMP)
	$(PY) bench/fanout_sim.py

bench-memory: $(STAMP)
	$(PY) bench/memory.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

# --- deploy (chalice package + CloudFormation; `chalice deploy` is not supported: infra/template.json is required)
# chalice package needs a region even though the template is region-free: REGION, else AWS_REGION, else eu-west-1.
STAGE ?=
BUCKET ?=
ALARM_TOPIC ?=
REGION ?= $(or $(AWS_REGION),$(AWS_DEFAULT_REGION),eu-west-1)
STACK = vif-gatekeeper-$(STAGE)
BUILD = build/$(STAGE)
AWS ?= aws

define need_stage
	@case "$(STAGE)" in dev|prod) ;; *) echo "error: say which stage: STAGE=dev or STAGE=prod (.chalice/config.json)" >&2; exit 2;; esac
endef
define need_aws
	@command -v $(AWS) >/dev/null 2>&1 || { echo "error: the aws CLI is needed to $(1) (not found on PATH)." >&2; \
	  echo "       Install it: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html" >&2; \
	  echo "       (or 'python3 -m pip install awscli'), configure credentials, then rerun." >&2; exit 2; }
endef

package: $(STAMP)
	$(call need_stage)
	@echo "Packaging stage $(STAGE) for region $(REGION) into $(BUILD)/"
	rm -rf $(BUILD) && mkdir -p build
	AWS_DEFAULT_REGION=$(REGION) $(VENV)/bin/chalice package --stage $(STAGE) --merge-template infra/template.json $(BUILD) 2>&1 | tee $(BUILD).log
	@# Chalice only warns when a wheel is missing; the function would then fail at import in Lambda.
	@if grep -q "Could not install dependencies" $(BUILD).log; then \
	  echo "error: chalice could not install every dependency for Lambda (see $(BUILD).log)" >&2; exit 1; fi
	$(PY) infra/slim_package.py $(BUILD)/deployment.zip
	$(VENV)/bin/cfn-lint $(BUILD)/sam.json
	@echo "deployment.zip: $$(stat -c %s $(BUILD)/deployment.zip) bytes"

deploy: package
	$(call need_aws,deploy)
	@if [ -z "$(BUCKET)" ]; then echo "error: BUCKET=<an S3 bucket in $(REGION)> is needed for the code upload" >&2; exit 2; fi
	$(AWS) cloudformation package --region $(REGION) --template-file $(BUILD)/sam.json --s3-bucket $(BUCKET) --s3-prefix $(STACK) --output-template-file $(BUILD)/packaged.yaml
	$(AWS) cloudformation deploy --region $(REGION) --template-file $(BUILD)/packaged.yaml --stack-name $(STACK) --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset --parameter-overrides Stage=$(STAGE) AlarmTopicArn=$(ALARM_TOPIC)
	$(AWS) cloudformation describe-stacks --region $(REGION) --stack-name $(STACK) --query "Stacks[0].Outputs" --output table

destroy:
	$(call need_stage)
	$(call need_aws,destroy)
	$(AWS) cloudformation delete-stack --region $(REGION) --stack-name $(STACK)
	$(AWS) cloudformation wait stack-delete-complete --region $(REGION) --stack-name $(STACK)
	@echo "Deleted $(STACK). Retained on purpose (it holds the decisions and approvals): the DynamoDB table vifgate-$(STAGE)-ledger."
	@echo "Remove it too with: $(AWS) dynamodb delete-table --region $(REGION) --table-name vifgate-$(STAGE)-ledger"
	@echo "Not created by the stack, remove by hand if unused: the secrets under vifgate/$(STAGE)/ and member-account roles."
