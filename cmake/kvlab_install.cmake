# What `cmake --install <build> --prefix P` puts under P, for an engine that decodes through
# kvlab's cache from its own build (docs/api.md):
#
#   include/kvlab/            kvlab.h, the engine-facing interface, and every header it includes,
#                             in the repository's folders (include/kvlab/kvcache/kv_cache.h)
#   lib/libkvlab_*.a          the static libraries below kvlab::model (not eval: the harness)
#   lib/cmake/kvlab/          find_package(kvlab CONFIG REQUIRED) -> the target kvlab::kvlab
#   lib/pkgconfig/kvlab.pc    pkg-config --cflags --libs kvlab
#   bin/kvlab                 the command
#
# Components: `dev` (headers, libraries, package files) and `cli` (the command), for an install
# that wants one of them (cmake --install build --component dev). scripts/test_install.sh builds
# examples/engine against a fresh install both ways.

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The libraries an engine links, each before the ones it uses: the order of pkg-config's Libs.
set(KVLAB_ENGINE_LIBS kvlab_model kvlab_kvcache kvlab_attention kvlab_cpu_kernels kvlab_base)

# One name to link, kvlab::kvlab, in this tree (the ALIAS) and in an install (EXPORT_NAME). The
# target `kvlab` is taken by the command.
add_library(kvlab_engine INTERFACE)
add_library(kvlab::kvlab ALIAS kvlab_engine)
set_target_properties(kvlab_engine PROPERTIES EXPORT_NAME kvlab)
target_link_libraries(kvlab_engine INTERFACE kvlab::model)  # model links the rest
target_compile_features(kvlab_engine INTERFACE cxx_std_20)  # the headers use std::span

# Both include directories: include/ for <kvlab/kvlab.h>, include/kvlab/ for the headers'
# own includes ("kvcache/memory.h").
install(TARGETS kvlab_engine ${KVLAB_ENGINE_LIBS} EXPORT kvlabTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} ${CMAKE_INSTALL_INCLUDEDIR}/kvlab)
install(TARGETS kvlab RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT cli)

string(CONFIGURE [[
  include("@PROJECT_SOURCE_DIR@/cmake/kvlab_install_headers.cmake")
  kvlab_install_headers("@PROJECT_SOURCE_DIR@" "${CMAKE_INSTALL_PREFIX}/@CMAKE_INSTALL_INCLUDEDIR@/kvlab" kvlab.h)
]] install_headers @ONLY)
install(CODE "${install_headers}" COMPONENT dev)

set(cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/kvlab)
install(EXPORT kvlabTargets NAMESPACE kvlab:: DESTINATION ${cmake_dir} COMPONENT dev)
configure_package_config_file(cmake/kvlabConfig.cmake.in ${PROJECT_BINARY_DIR}/kvlabConfig.cmake
                              INSTALL_DESTINATION ${cmake_dir})
# 0.x: a minor version may change the interface.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvlabConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvlabConfig.cmake ${PROJECT_BINARY_DIR}/kvlabConfigVersion.cmake
        DESTINATION ${cmake_dir} COMPONENT dev)

# kvlab.pc finds its prefix from its own folder (${pcfiledir}), so it holds for any --prefix.
file(RELATIVE_PATH KVLAB_PC_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" KVLAB_PC_PREFIX "${KVLAB_PC_PREFIX}")  # "../..": lib/pkgconfig to the prefix
list(TRANSFORM KVLAB_ENGINE_LIBS PREPEND -l OUTPUT_VARIABLE pc_libs)
list(JOIN pc_libs " " KVLAB_PC_LIBS)
configure_file(cmake/kvlab.pc.in ${PROJECT_BINARY_DIR}/kvlab.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/kvlab.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)
