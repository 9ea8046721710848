# `cmake --install`: the library (CUDA backend included), its headers, the CLI, a CMake package
# (find_package(proxyattn), target proxyattn::proxyattn) and a pkg-config file (proxyattn.pc).
# tests/install builds and runs a C program against the installed tree both ways.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(PROXYATTN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/proxyattn)

install(TARGETS proxyattn EXPORT proxyattnTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS proxyattn_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/proxyattn DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# What a program links besides libproxyattn: the CUDA runtime (with the CUDA backend), threads,
# and, for a C program's link, the C++ runtime a C compiler does not add by itself (libstdc++
# and libm with GCC: the libraries the C++ compiler links implicitly and the C one does not).
set(_pa_deps "")
if(PROXYATTN_WITH_CUDA)
  find_package(CUDAToolkit REQUIRED)
  string(APPEND _pa_deps " -L${CUDAToolkit_LIBRARY_DIR} -lcudart")
endif()
if(CMAKE_THREAD_LIBS_INIT)
  string(APPEND _pa_deps " ${CMAKE_THREAD_LIBS_INIT}")
endif()
set(PROXYATTN_CXX_RUNTIME "")
foreach(_pa_lib IN LISTS CMAKE_CXX_IMPLICIT_LINK_LIBRARIES)
  if(NOT _pa_lib IN_LIST CMAKE_C_IMPLICIT_LINK_LIBRARIES AND NOT _pa_lib IN_LIST PROXYATTN_CXX_RUNTIME)
    list(APPEND PROXYATTN_CXX_RUNTIME ${_pa_lib})
    if(IS_ABSOLUTE "${_pa_lib}" OR _pa_lib MATCHES "^-")
      string(APPEND _pa_deps " ${_pa_lib}")
    else()
      string(APPEND _pa_deps " -l${_pa_lib}")
    endif()
  endif()
endforeach()
get_target_property(_pa_type proxyattn TYPE)
if(_pa_type STREQUAL "STATIC_LIBRARY")
  set(PROXYATTN_STATIC ON)
else()
  set(PROXYATTN_STATIC OFF)
endif()

# The CMake package.
install(EXPORT proxyattnTargets NAMESPACE proxyattn:: DESTINATION ${PROXYATTN_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/proxyattnConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/proxyattnConfig.cmake
                              INSTALL_DESTINATION ${PROXYATTN_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/proxyattnConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)  # 0.x: a minor version may break
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/proxyattnConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/proxyattnConfigVersion.cmake
        DESTINATION ${PROXYATTN_CMAKE_DIR})

# proxyattn.pc. A static library's dependencies are every program's (Libs), a shared one's
# only a static link's (Libs.private). Paths start from ${pcfiledir}, so that the file holds
# wherever the tree is installed (cmake --install --prefix DIR).
if(PROXYATTN_STATIC)
  set(PROXYATTN_PC_LIBS "-L\${libdir} -lproxyattn${_pa_deps}")
  set(PROXYATTN_PC_LIBS_PRIVATE "")
else()
  set(PROXYATTN_PC_LIBS "-L\${libdir} -lproxyattn")
  string(STRIP "${_pa_deps}" PROXYATTN_PC_LIBS_PRIVATE)
endif()
file(RELATIVE_PATH PROXYATTN_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REGEX REPLACE "/$" "" PROXYATTN_PC_TO_PREFIX "${PROXYATTN_PC_TO_PREFIX}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/proxyattn.pc.in ${CMAKE_CURRENT_BINARY_DIR}/proxyattn.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/proxyattn.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
unset(_pa_deps)
unset(_pa_type)
