# Include layering check, run as a CTest test (cmake -P, so no Python is needed):
#
#   cmake -DSEQMIX_SOURCE_DIR=<source tree> -P cmake/seqmix_check_layers.cmake
#
# The library is layered in floors (docs/compile_time.md): core at the bottom; positional (rope),
# ssm and linear_attention on it, each on its own; attention on core and positional; kv_cache on
# attention; chunked (the hybrids) on ssm, linear_attention and attention; lti (long convolutions,
# LTI state-space kernels) on core alone; rnn (the nonlinear cells and test-time memories) on core alone
# (titans shares linear attention's q/k/v check through core/qkv_check.hpp); memory (product-key
# memory) on core alone; structured (2-D and directional scans) on core and ssm; io beside
# core; mpi (the optional context-parallel component, which needs <mpi.h>) on top of every
# operator family, included by no other family and not by seqmix.hpp. A header may include only
# headers of its own family and of the families below it, so a user who includes one family's
# umbrella header does not compile the others. Two rules are checked:
#
# 1. Every header under include/seqmix/<family>/ (and the umbrella include/seqmix/<family>.hpp)
#    includes seqmix headers of the allowed families only (_allowed_<family> below). A problem
#    names the file, the include and the family it brought in.
# 2. The transitive includes of every umbrella header stay within its allowed families, and
#    those of the Eigen-free headers (_eigen_free below) never reach <Eigen/...>: dense and
#    paged attention, rope and the light core headers need no Eigen.
#
# Every problem is printed; the script fails (FATAL_ERROR) if there was any.
cmake_minimum_required(VERSION 3.16)

if(NOT SEQMIX_SOURCE_DIR)
  get_filename_component(SEQMIX_SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
endif()
set(_inc "${SEQMIX_SOURCE_DIR}/include")

# Families each family may include (its own is always allowed). Mirrors the folder layout.
set(_families core io positional ssm linear_attention attention kv_cache chunked lti rnn memory mpi structured)
set(_allowed_core "")
set(_allowed_io core)
set(_allowed_positional core)
set(_allowed_ssm core)
set(_allowed_linear_attention core)
set(_allowed_attention core positional)
set(_allowed_kv_cache core attention positional)
set(_allowed_chunked core ssm linear_attention attention positional)
set(_allowed_lti core)
set(_allowed_rnn core)
set(_allowed_memory core)
set(_allowed_mpi core positional ssm linear_attention attention chunked)
set(_allowed_structured core ssm)

# Known exceptions, each to be removed when fixed (docs/compile_time.md): a header that may
# include a family above its floor, and so the umbrella headers that reach it. None today.
set(_exception_headers)
set(_exception_families)

# Headers whose transitive includes must not reach Eigen.
set(_eigen_free
  seqmix/core/error.hpp seqmix/core/tensor.hpp seqmix/core/batch.hpp seqmix/core/parallel.hpp
  seqmix/core/simd.hpp seqmix/core/half.hpp seqmix/core/scan.hpp seqmix/core/thread_keep.hpp seqmix/io/npy.hpp
  seqmix/attention/dense/flash.hpp seqmix/attention/dense/decode.hpp seqmix/attention/paged/paged.hpp
  seqmix/positional.hpp)

set(_problems "")

# The family of a header path relative to include/ ("seqmix/ssm/ssd/step.hpp" -> ssm,
# "seqmix/ssm.hpp" -> ssm, "seqmix/seqmix.hpp" -> all).
function(_layer_family rel out)
  if(rel STREQUAL "seqmix/seqmix.hpp")
    set(${out} all PARENT_SCOPE)
  elseif(rel MATCHES "^seqmix/([a-z_]+)/")
    set(${out} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  elseif(rel MATCHES "^seqmix/([a-z_]+)\\.hpp$")
    set(${out} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()

# The #include targets of one header: seqmix headers in <out>_seqmix, others in <out>_system.
function(_layer_includes rel out)
  file(STRINGS "${_inc}/${rel}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
  set(own "")
  set(system "")
  foreach(line IN LISTS lines)
    if(line MATCHES "#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"]")
      set(target "${CMAKE_MATCH_1}")
      if(target MATCHES "^seqmix/")
        list(APPEND own "${target}")
      else()
        list(APPEND system "${target}")
      endif()
    endif()
  endforeach()
  set(${out}_seqmix "${own}" PARENT_SCOPE)
  set(${out}_system "${system}" PARENT_SCOPE)
endfunction()

file(GLOB_RECURSE _headers RELATIVE "${_inc}" "${_inc}/seqmix/*.hpp")
list(SORT _headers)

# Direct includes of every header, kept for the transitive walk.
foreach(_h IN LISTS _headers)
  _layer_includes("${_h}" _inc_of)
  string(MAKE_C_IDENTIFIER "${_h}" _key)
  set(_seqmix_of_${_key} "${_inc_of_seqmix}")
  set(_system_of_${_key} "${_inc_of_system}")
endforeach()

# 1. Direct includes.
set(_checked 0)
foreach(_h IN LISTS _headers)
  _layer_family("${_h}" _fam)
  if(_fam STREQUAL "all")
    continue()
  endif()
  if(NOT _fam IN_LIST _families)
    list(APPEND _problems "${_h}: not in a known family (${_families}); add it to cmake/seqmix_check_layers.cmake")
    continue()
  endif()
  string(MAKE_C_IDENTIFIER "${_h}" _key)
  foreach(_target IN LISTS _seqmix_of_${_key})
    math(EXPR _checked "${_checked} + 1")
    if(NOT EXISTS "${_inc}/${_target}")
      list(APPEND _problems "${_h}: includes ${_target}, which does not exist")
      continue()
    endif()
    _layer_family("${_target}" _tfam)
    if(_h IN_LIST _exception_headers AND _tfam IN_LIST _exception_families)
      continue()
    endif()
    if(NOT _tfam STREQUAL _fam AND NOT _tfam IN_LIST _allowed_${_fam})
      list(APPEND _problems
        "${_h}: includes ${_target}: family '${_fam}' may include only '${_fam}' and '${_allowed_${_fam}}', not '${_tfam}'")
    endif()
  endforeach()
endforeach()

# 2. Transitive includes of the umbrella headers and of the Eigen-free headers.
function(_layer_closure rel out_seqmix out_system)
  set(todo "${rel}")
  set(skip_exceptions ${ARGN})
  set(seen "")
  set(system "")
  while(todo)
    list(POP_FRONT todo h)
    if(h IN_LIST seen)
      continue()
    endif()
    list(APPEND seen "${h}")
    string(MAKE_C_IDENTIFIER "${h}" key)
    if(skip_exceptions AND h IN_LIST _exception_headers)
      continue()  # a known exception: what it reaches is reported once, by the direct check's list
    endif()
    list(APPEND todo ${_seqmix_of_${key}})
    list(APPEND system ${_system_of_${key}})
  endwhile()
  list(REMOVE_DUPLICATES system)
  set(${out_seqmix} "${seen}" PARENT_SCOPE)
  set(${out_system} "${system}" PARENT_SCOPE)
endfunction()

set(_umbrellas "")
foreach(_fam IN LISTS _families)
  if(EXISTS "${_inc}/seqmix/${_fam}.hpp")
    list(APPEND _umbrellas "seqmix/${_fam}.hpp")
  endif()
endforeach()

foreach(_u IN LISTS _umbrellas)
  _layer_family("${_u}" _fam)
  _layer_closure("${_u}" _all _sys SKIP_EXCEPTIONS)
  set(_reached "")
  foreach(_h IN LISTS _all)
    _layer_family("${_h}" _hfam)
    if(NOT _hfam STREQUAL _fam AND NOT _hfam IN_LIST _allowed_${_fam} AND NOT _hfam IN_LIST _reached)
      list(APPEND _reached "${_hfam}")
      list(APPEND _problems "${_u}: pulls in family '${_hfam}' (first through ${_h}), which '${_fam}' does not need")
    endif()
  endforeach()
  list(LENGTH _all _n)
  message(STATUS "layers: ${_u} reaches ${_n} seqmix headers")
endforeach()

# The optional MPI component stays out of the whole-library header: seqmix.hpp must compile
# without <mpi.h>.
if(EXISTS "${_inc}/seqmix/seqmix.hpp")
  _layer_closure("seqmix/seqmix.hpp" _all _sys)
  foreach(_h IN LISTS _all)
    if(_h MATCHES "^seqmix/mpi[/.]")
      list(APPEND _problems "seqmix/seqmix.hpp: reaches ${_h}; the MPI component must stay optional")
      break()
    endif()
  endforeach()
endif()

foreach(_h IN LISTS _eigen_free)
  if(NOT EXISTS "${_inc}/${_h}")
    list(APPEND _problems "${_h}: listed as Eigen-free but does not exist")
    continue()
  endif()
  _layer_closure("${_h}" _all _sys SKIP_EXCEPTIONS)
  foreach(_s IN LISTS _sys)
    if(_s MATCHES "^Eigen/")
      list(APPEND _problems "${_h}: reaches <${_s}>, but needs no Eigen")
      break()
    endif()
  endforeach()
endforeach()

list(LENGTH _headers _nh)
if(_problems)
  foreach(_p IN LISTS _problems)
    message("layers: ${_p}")
  endforeach()
  list(LENGTH _problems _np)
  message(FATAL_ERROR "layers: ${_np} problem(s) in ${_nh} headers")
endif()
message(STATUS "layers: ${_nh} headers, ${_checked} seqmix includes checked, no family pulled in that is not needed")
foreach(_h IN LISTS _exception_headers)
  message(STATUS "layers: known exception, to be removed: ${_h} may include ${_exception_families}")
endforeach()
