#!/usr/bin/env bash
# Device-portability tests on the wgpu device. On a machine without a GPU this runs on Mesa's
# software Vulkan (lavapipe), slowly; the cold wgpu build of Burn takes ~30 minutes on 2 cores,
# so this is kept out of CI. Uses its own target directory so the flex build is not disturbed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p | grep -q libvulkan_lvp && [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ]; then
    echo "installing Mesa's software Vulkan driver (mesa-vulkan-drivers)"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers; else sudo apt-get update -qq && sudo apt-get install -y -qq mesa-vulkan-drivers; fi
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/wgpu}"
BURNQ_TEST_DEVICE=wgpu cargo test --release -p burn-quant-core --features wgpu --test device_portability -- --test-threads=1 "$@"
