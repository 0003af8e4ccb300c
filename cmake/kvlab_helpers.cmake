# Uniform target helpers: every library, test and benchmark is declared the same way.
#
#   kvlab_cc_library(NAME model SRCS a.cc HDRS a.h DEPS kvlab::base)   -> target kvlab_model, alias kvlab::model
#   kvlab_cc_test(NAME gguf_test SRCS gguf_test.cc DEPS kvlab::model)  -> one executable, tests discovered by CTest
#     [LABELS isa]: CTest labels of its tests; `isa` marks the suites that scripts/run_tests.sh reruns
#     under each narrower $KVLAB_ISA
#   kvlab_cc_bench(NAME decoder_bench SRCS decoder_bench.cc DEPS ...)  -> one Google Benchmark executable

set(KVLAB_WARNINGS -Wall -Wextra -Wno-unknown-pragmas)
# nvcc takes the host compiler's warnings through -Xcompiler and warns about device code itself.
set(KVLAB_CUDA_WARNINGS -Xcompiler=-Wall,-Wextra,-Wno-unknown-pragmas)

function(kvlab_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS;DEFINES" ${ARGN})
  add_library(kvlab_${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
  add_library(kvlab::${ARG_NAME} ALIAS kvlab_${ARG_NAME})
  # kvlab::<name> in an install too; there the include directories are the installed ones
  # (cmake/kvlab_install.cmake).
  set_target_properties(kvlab_${ARG_NAME} PROPERTIES EXPORT_NAME ${ARG_NAME})
  target_include_directories(kvlab_${ARG_NAME} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  target_compile_options(kvlab_${ARG_NAME} PRIVATE "$<$<COMPILE_LANGUAGE:CXX>:${KVLAB_WARNINGS}>"
                         "$<$<COMPILE_LANGUAGE:CUDA>:${KVLAB_CUDA_WARNINGS}>")
  target_compile_definitions(kvlab_${ARG_NAME} PRIVATE ${ARG_DEFINES})
  target_link_libraries(kvlab_${ARG_NAME} PUBLIC ${ARG_DEPS})
endfunction()

function(kvlab_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;DEFINES;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE ${KVLAB_WARNINGS})
  target_compile_definitions(${ARG_NAME} PRIVATE ${KVLAB_SOURCE_DIR_DEFINE} ${ARG_DEFINES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  # ENVIRONMENT adds to the environment ctest was started with; $KVLAB_ISA passes through.
  set(properties ENVIRONMENT "KVLAB_BIN_DIR=${CMAKE_BINARY_DIR}/bin")
  if(ARG_LABELS)
    list(APPEND properties LABELS "${ARG_LABELS}")
  endif()
  gtest_discover_tests(${ARG_NAME} DISCOVERY_TIMEOUT 60 PROPERTIES ${properties})
endfunction()

function(kvlab_cc_bench)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE ${KVLAB_WARNINGS})
  target_compile_definitions(${ARG_NAME} PRIVATE ${KVLAB_SOURCE_DIR_DEFINE})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} benchmark::benchmark)
endfunction()
