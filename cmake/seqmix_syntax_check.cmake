# Syntax checks of programs that are not built.
#
# The test suite must notice a benchmark or an example that no longer compiles, but building the
# 21 benchmark programs at -O3 and the examples costs more than the whole test binary (about 25 s
# of compiler time per benchmark against 2-3 s for a syntax check on 2 cores). With
# SEQMIX_CHECK_PROGRAMS=ON (scripts/test.sh), every benchmark and example that is not built is
# compiled with -fsyntax-only instead: the compiler parses it and instantiates every template it
# uses, so an API change that breaks one fails the build, but no code is generated. Link errors
# are left to the real builds (scripts/main.sh builds and runs them); the library is header-only,
# so a program that passes the check and links against nothing new links.
#
# seqmix_syntax_check(<target> SOURCES <cpp>... LIBRARIES <target>...) adds an object library
# <target> over the sources, with the usage requirements of LIBRARIES, compiled through
# cmake/seqmix_syntax_only.sh.
function(seqmix_syntax_check target)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES)
    return()
  endif()
  add_library(${target} OBJECT ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE ${ARG_LIBRARIES})
  set_target_properties(${target} PROPERTIES
    CXX_COMPILER_LAUNCHER "sh;${PROJECT_SOURCE_DIR}/cmake/seqmix_syntax_only.sh")
endfunction()
