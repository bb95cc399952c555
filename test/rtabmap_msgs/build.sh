#!/usr/bin/env bash
# Generates and installs the rtabmap_msgs interfaces (the vendored sources beside this script) into
# a venv that holds the ROS Kilted wheels from PyPI, so that `import rtabmap_msgs.msg` works there
# with nothing sourced. Everything lands in the venv prefix, next to the wheels' own message
# packages: the typesupport libraries in lib/ (which the wheels' bootstrapper already puts on the
# library path), the Python package in site-packages, the ament index and CMake config in share/.
#
# usage: test/rtabmap_msgs/build.sh VENV
# The venv needs the project's "ros" and "dev" extras (the latter brings the rosidl generators and
# ament_cmake); the build also needs cmake >= 3.21, a C/C++ compiler and the Python headers.
# JOBS sets the build parallelism (default: all cores).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 VENV" >&2
  exit 2
fi
VENV=$(cd "$1" && pwd)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -x "$VENV/bin/python" ] || { echo "$0: $VENV has no bin/python" >&2; exit 2; }
[ -d "$VENV/share/rosidl_default_generators" ] || {
  echo "$0: $VENV lacks the rosidl generators (pip install -e '.[dev,ros]')" >&2; exit 2; }

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

# The wheels' exported *__rosidl_generator_py targets carry the include folders of the machine that
# built the wheels (its own Python and NumPy) in INTERFACE_INCLUDE_DIRECTORIES; CMake stops at
# generate time on an imported target that names a folder which does not exist. Once the project
# is configured, drop those absent absolute folders (the local Python and NumPy headers reach the
# build through Python3::Python and Python3::NumPy).
cat > "$BUILD/drop_absent_includes.cmake" <<'CMAKE'
function(drop_absent_imported_includes)
  get_property(targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(target IN LISTS targets)
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT dirs)
      continue()
    endif()
    set(present)
    foreach(dir IN LISTS dirs)
      if(dir MATCHES "^\\$<" OR NOT IS_ABSOLUTE "${dir}" OR EXISTS "${dir}")
        list(APPEND present "${dir}")
      endif()
    endforeach()
    if(NOT present STREQUAL dirs)
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${present}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL drop_absent_imported_includes)
CMAKE

# rosidl finds its generators and typesupports through the ament index under AMENT_PREFIX_PATH; the
# code generators run with the first python on PATH.
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$VENV/bin/python" -DCMAKE_PROJECT_INCLUDE="$BUILD/drop_absent_includes.cmake"
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
cmake --install "$BUILD"

# The installed types load without any setup file (the bootstrapper re-executes python with the
# venv's lib/ on the library path) and survive a CDR round trip.
"$VENV/bin/python" - <<'PY'
from rclpy.serialization import deserialize_message, serialize_message
from rtabmap_msgs.msg import RGBDImage

msg = RGBDImage()
msg.global_descriptor.data = bytes(range(256))
back = deserialize_message(serialize_message(msg), RGBDImage)
assert bytes(back.global_descriptor.data) == bytes(range(256)), "rtabmap_msgs round trip changed the data"
print("rtabmap_msgs installed into the venv")
PY
