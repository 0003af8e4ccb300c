# Installs the engine-facing headers at `cmake --install` time (cmake/kvlab_install.cmake runs
# kvlab_install_headers from install(CODE)): the closure is taken from the sources as they are
# then, so a header that gains an include needs no reconfigure.

# kvlab_header_closure(<out-var> <source-dir> <header>...): the headers given and every header
# they include with "...", transitively, as paths relative to <source-dir> (the repository
# includes its own headers from the root: "kvcache/memory.h"). What an install must carry for the
# given headers to compile elsewhere.
#
# Fatal errors, so that an install never lacks a header silently:
#   a quoted include that is no file under <source-dir>;
#   an <...> include whose name has a '.' or a '/' (<omp.h>, <Eigen/Dense>): not the standard
#   library, and not a dependency the installed package exports (cmake/kvlabConfig.cmake.in).
#
# Conservative: an include inside #if counts.
function(kvlab_header_closure out src)
  set(todo ${ARGN})
  set(done "")
  while(todo)
    list(POP_FRONT todo h)
    list(FIND done "${h}" seen)  # not IN_LIST: install scripts run without the project's policies
    if(seen GREATER -1)
      continue()
    endif()
    list(APPEND done "${h}")
    file(STRINGS "${src}/${h}" lines REGEX "^[ \t]*#[ \t]*include")
    foreach(line IN LISTS lines)
      if(line MATCHES "^[ \t]*#[ \t]*include[ \t]*\"([^\"]+)\"")
        if(NOT EXISTS "${src}/${CMAKE_MATCH_1}")
          message(FATAL_ERROR "${h} includes \"${CMAKE_MATCH_1}\", which is not a file under ${src}")
        endif()
        list(APPEND todo "${CMAKE_MATCH_1}")
      elseif(line MATCHES "^[ \t]*#[ \t]*include[ \t]*<([^>]+)>")
        set(name "${CMAKE_MATCH_1}")
        if(name MATCHES "[./]")
          message(FATAL_ERROR "${h} includes <${name}>: an installed header may include only "
                              "kvlab's own headers and the standard library")
        endif()
      endif()
    endforeach()
  endwhile()
  set(${out} "${done}" PARENT_SCOPE)
endfunction()

# kvlab_install_headers(<source-dir> <dest-dir> <header>...): copies the closure of the headers
# to <dest-dir>, keeping their folders (<dest-dir>/kvcache/kv_cache.h). file(INSTALL) honours
# DESTDIR and lists the files in install_manifest.txt, as install(FILES) would.
function(kvlab_install_headers src dest)
  kvlab_header_closure(headers "${src}" ${ARGN})
  foreach(h IN LISTS headers)
    get_filename_component(dir "${dest}/${h}" DIRECTORY)
    file(INSTALL "${src}/${h}" DESTINATION "${dir}")
  endforeach()
  # file(INSTALL) lists the files in this variable, which the install script writes out.
  set(CMAKE_INSTALL_MANIFEST_FILES "${CMAKE_INSTALL_MANIFEST_FILES}" PARENT_SCOPE)
endfunction()
