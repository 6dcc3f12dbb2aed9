# Install rules and the Debian package (CPack DEB), included from the top-level
# CMakeLists.txt after the targets exist:
#   include(cmake/install.cmake)
#
#   cmake -S . -B build/pkg -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build/pkg --target sidetrace && cmake --build build/pkg --target package
#
# Installs the binary, the systemd units (their paths rewritten to the install
# prefix), the sysusers.d entry, the default configuration (a conffile in the
# package) and the documentation.
include(GNUInstallDirs)

set(_st_sysconf "${CMAKE_INSTALL_FULL_SYSCONFDIR}/sidetrace")
set(_st_bin "${CMAKE_INSTALL_FULL_BINDIR}/sidetrace")

install(TARGETS sidetrace RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT agent)

# The units name /usr/bin/sidetrace and /etc/sidetrace; other prefixes get
# copies that name the installed paths.
set(_st_units "${CMAKE_CURRENT_BINARY_DIR}/systemd")
foreach(_unit sidetrace.service sidetrace.socket)
  file(READ "${CMAKE_CURRENT_LIST_DIR}/../systemd/${_unit}" _text)
  string(REPLACE "/usr/bin/sidetrace" "${_st_bin}" _text "${_text}")
  string(REPLACE "/etc/sidetrace/" "${_st_sysconf}/" _text "${_text}")
  file(WRITE "${_st_units}/${_unit}" "${_text}")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
                                         "${CMAKE_CURRENT_LIST_DIR}/../systemd/${_unit}")
endforeach()
install(FILES "${_st_units}/sidetrace.service" "${_st_units}/sidetrace.socket"
        DESTINATION ${CMAKE_INSTALL_PREFIX}/lib/systemd/system COMPONENT agent)
install(FILES "${CMAKE_CURRENT_LIST_DIR}/../systemd/sidetrace.sysusers"
        DESTINATION ${CMAKE_INSTALL_PREFIX}/lib/sysusers.d RENAME sidetrace.conf COMPONENT agent)
install(FILES "${CMAKE_CURRENT_LIST_DIR}/../systemd/sidetrace.toml"
        DESTINATION ${_st_sysconf} COMPONENT agent)
install(FILES "${CMAKE_CURRENT_LIST_DIR}/../README.md"
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT agent)
install(DIRECTORY "${CMAKE_CURRENT_LIST_DIR}/../docs/"
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT agent FILES_MATCHING PATTERN "*.md")

# ---- CPack: a Debian package.
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "sidetrace")
set(CPACK_PACKAGE_VENDOR "sidetrace")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "local sidecar agent for tracing LLM applications")
set(CPACK_PACKAGE_DESCRIPTION
    "sidetrace receives tracing events from applications over Unix sockets or UDP, stores them\n"
    "durably, rebuilds each trace and forwards finished traces upstream over HTTP(S) with\n"
    "retries. Runs as a systemd service with socket activation.")
string(REPLACE ";" "" CPACK_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "sidetrace maintainers <sidetrace@localhost>"
    CACHE STRING "Maintainer field of the Debian package")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# Library dependencies from the binary itself (dpkg-shlibdeps), plus what the
# maintainer scripts and the unit use.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd (>= 247)")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "ca-certificates")

# Maintainer scripts and the conffile list, with the install paths filled in.
set(_st_deb "${CMAKE_CURRENT_BINARY_DIR}/debian")
foreach(_script postinst prerm postrm)
  configure_file("${CMAKE_CURRENT_LIST_DIR}/debian/${_script}.in" "${_st_deb}/${_script}" @ONLY
                 FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
                                  WORLD_READ WORLD_EXECUTE)
endforeach()
file(WRITE "${_st_deb}/conffiles" "${_st_sysconf}/sidetrace.toml\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA "${_st_deb}/conffiles;${_st_deb}/postinst;${_st_deb}/prerm;${_st_deb}/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)

include(CPack)
