// fuzz/stb_image_impl.cpp — stb_image's decoder compiled into the fuzz targets, so that the
// sanitizers instrument it too (the library links Debian's prebuilt libstb, which they cannot
// see into). The definitions here take the place of the shared library's in these executables.
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
