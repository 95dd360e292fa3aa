#!/usr/bin/env bash
# Builds llama.cpp (the copy vendored in PyPI's llama-cpp-python 0.3.36, the version our GGUF
# exports are checked against) and a Python venv with llama-cpp-python's bindings on it, once
# per machine, into a cache outside the clone that every clone reuses:
#
#   ${BURNQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/burn-quant}/llama-cpp-0.3.36/venv
#
#   scripts/llama-cpp-venv.sh          builds it when absent; prints the venv's python (last line)
#   scripts/llama-cpp-venv.sh --path   prints the venv's python, or exits 3 when it is not built
#
# Only what the checks use is compiled: libllama and ggml's CPU backend as shared libraries
# (cmake + ninja from PyPI wheels, Release, GGML_NATIVE=OFF, no common/tools/examples/server/
# tests/llava), about 5 min on 2 cores; pip then installs the bindings' Python package without
# building anything. Needs python3 (3.8+), a C/C++ compiler and PyPI. The build runs under a lock
# (two processes never build it twice) in a temporary folder renamed into place when complete.
# The root test tests/gguf_llama.rs runs this on first use; scripts/llama-cpp-check.sh uses it.
set -euo pipefail
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# Changing how the cache is built? Change the recipe, so caches made the old way are rebuilt.
recipe="llama-cpp-python $version, libllama + ggml-cpu, Release, GGML_NATIVE=OFF, recipe 1"
cache="${BURNQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/burn-quant}"
dir="$cache/llama-cpp-$version"
python="$dir/venv/bin/python"

ready() { [ -x "$python" ] && [ "$(cat "$dir/recipe" 2>/dev/null)" = "$recipe" ]; }

if [ "${1:-}" = "--path" ]; then
  if ready; then echo "$python"; exit 0; fi
  echo "notice: llama.cpp is not built in $dir (run scripts/llama-cpp-venv.sh)" >&2
  exit 3
elif [ $# -gt 0 ]; then
  sed -n '2,16p' "$0" >&2; exit 2
fi
if ready; then echo "$python"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/llama-cpp-$version.lock"
if ! flock -n 9; then
  echo "notice: waiting for another build of $dir" >&2
  flock 9
fi
if ready; then echo "$python"; exit 0; fi

start=$(date +%s)
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
tmp="$(mktemp -d "$cache/llama-cpp-$version.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/build.log"
echo "notice: building llama.cpp (llama-cpp-python $version) into $dir, once per machine" \
  "(about 5 min on 2 cores; log: $dir/build.log)" >&2
step() { # step NAME COMMAND...: runs COMMAND with its output in the log; on failure shows it
  echo "== $1 ($(( $(date +%s) - start )) s)" >>"$log"
  if ! "${@:2}" >>"$log" 2>&1; then
    cp "$log" "$cache/llama-cpp-$version.failed.log"
    echo "error: llama.cpp build failed at: $1; the end of" \
      "$cache/llama-cpp-$version.failed.log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
pip_quiet=(-m pip --disable-pip-version-check --no-input)

# Build tools (cmake, ninja) and the sdist, in a throwaway venv.
step "tools venv" python3 -m venv "$tmp/tools"
step "cmake, ninja" "$tmp/tools/bin/python" "${pip_quiet[@]}" install cmake==4.4.5 ninja==1.13.2
echo "llama-cpp-python==$version --hash=sha256:$sha256" >"$tmp/sdist.txt"
step "sdist" "$tmp/tools/bin/python" "${pip_quiet[@]}" download --no-deps \
  --no-binary llama-cpp-python --require-hashes -r "$tmp/sdist.txt" -d "$tmp/dl"
src="llama_cpp_python-$version/vendor/llama.cpp"
step "unpack" tar -xzf "$tmp/dl/llama_cpp_python-$version.tar.gz" -C "$tmp" \
  "$src"/{CMakeLists.txt,cmake,ggml,include,src,vendor}
src="$tmp/$src"
export PATH="$tmp/tools/bin:$PATH"
step "configure" cmake -S "$src" -B "$tmp/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN'
step "compile libllama" ninja -C "$tmp/build" -j "$jobs" llama

# The venv: the bindings' Python package (LLAMA_BUILD=OFF: pip compiles nothing) with the
# libraries just built in its llama_cpp/lib, where it loads them from.
step "venv" python3 -m venv "$tmp/venv"
step "bindings" env CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
  "$tmp/venv/bin/python" "${pip_quiet[@]}" install numpy==2.3.5 jinja2==3.1.6 MarkupSafe==3.0.3 \
  diskcache==5.6.3 typing-extensions==4.15.0 "$tmp/dl/llama_cpp_python-$version.tar.gz"
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
lib="$("$tmp/venv/bin/python" -c "$purelib")/llama_cpp/lib"
mkdir -p "$lib"
step "libraries" cp -P "$tmp/build/bin/"*.so* "$lib/"
step "import" "$tmp/venv/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)"

# Into place: only a complete venv ever appears at $dir.
rm -rf "$tmp/tools" "$tmp/dl" "$tmp/build" "$tmp/llama_cpp_python-$version" "$tmp/sdist.txt"
secs=$(( $(date +%s) - start ))
echo "== done in $secs s on $jobs jobs ($(nproc) cores)" >>"$log"
echo "$recipe" >"$tmp/recipe"
if [ -e "$dir" ]; then mv "$dir" "$tmp.old"; rm -rf "$tmp.old"; fi
mv "$tmp" "$dir"
trap - EXIT
echo "notice: built llama.cpp into $dir in $secs s" >&2
echo "$python"
