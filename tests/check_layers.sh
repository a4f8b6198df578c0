#!/bin/sh
# The layering of include/seemoe, checked by grep (run by ctest as `include_layers`).
#
# A header may include headers of its own folder and of the folders listed for it below, never of
# a higher layer:
#   core                      nothing but core
#   ops                       core
#   optim                     core, ops (the update's loops run on the kernel path of
#                             ops/gemm_kernel.hpp)
#   io, data                  core, and each other (file formats and data sets)
#   nn                        core, ops, optim, io, data (nn/checkpoint.hpp meets the file formats)
#   dist                      everything above (the optional MPI layer)
# seemoe.hpp, the umbrella, includes everything. Prints each violation as
# "path: includes folder/file.hpp (layer X may use only: ...)" and exits 1 if there is any.
set -u
root="${1:-$(dirname "$0")/../include/seemoe}"
status=0

allowed() {
    case "$1" in
        core) echo "core" ;;
        ops) echo "core ops" ;;
        optim) echo "core ops optim" ;;
        io) echo "core io data" ;;
        data) echo "core data io" ;;
        nn) echo "core ops optim io data nn" ;;
        dist) echo "core ops optim io data nn dist" ;;
        *) echo "" ;;
    esac
}

for header in "$root"/*/*.hpp; do
    layer=$(basename "$(dirname "$header")")
    ok=$(allowed "$layer")
    if [ -z "$ok" ]; then
        echo "$header: folder '$layer' has no layer in tests/check_layers.sh; add it there"
        status=1
        continue
    fi
    # Quoted includes are relative to the header's folder ("x.hpp" or "../folder/x.hpp");
    # <seemoe/folder/x.hpp> names the folder directly.
    targets=$(sed -n -e 's|^[[:space:]]*#[[:space:]]*include[[:space:]]*"\.\./\([a-z_]*\)/[^"]*".*|\1|p' \
                     -e 's|^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^./"][^"]*".*|'"$layer"'|p' \
                     -e 's|^[[:space:]]*#[[:space:]]*include[[:space:]]*<seemoe/\([a-z_]*\)/[^>]*>.*|\1|p' \
                     "$header")
    for target in $targets; do
        case " $ok " in
            *" $target "*) ;;
            *)
                line=$(grep -n "include.*$target/" "$header" | head -n 1)
                echo "$header: includes from '$target' (line ${line%%:*}), but layer '$layer' may use only: $ok"
                status=1
                ;;
        esac
    done
done
[ "$status" -eq 0 ] && echo "include layers ok: every header includes only its own or a lower layer"
exit "$status"
