# Work around Debian's libxsimd-dev 8.1 package config.
#
# Its imported target `xsimd` lists `xtl` in INTERFACE_LINK_LIBRARIES, but xsimdConfig.cmake
# never looks for xtl and the package does not depend on xtl-dev. Unless something else created
# an `xtl` target, CMake passes the name to the linker as `-lxtl`, and every program that links
# `xsimd` fails with "cannot find -lxtl". xsimd only includes xtl headers when
# XSIMD_ENABLE_XTL_COMPLEX is defined, which seqmix never does, so the dangling name is dropped.
#
# Included by seqmix's top-level CMakeLists.txt and by the installed seqmixConfig.cmake, right
# after xsimd has been found. Does nothing when an `xtl` target exists or xsimd does not list it.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_seqmix_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_seqmix_xsimd_links AND "xtl" IN_LIST _seqmix_xsimd_links)
    list(REMOVE_ITEM _seqmix_xsimd_links xtl)
    set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "${_seqmix_xsimd_links}")
  endif()
  unset(_seqmix_xsimd_links)
endif()
