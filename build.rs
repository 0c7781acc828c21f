//! Generates the Asterisk bindings and compiles the C glue.
//!
//! Headers: `ASTERISK_INCLUDE_DIR` if set, else an installed Asterisk in the usual
//! places, else the project's own minimal declarations in `include/`.

use std::env;
use std::path::{Path, PathBuf};

/// Where installed Asterisk headers are commonly found.
const SYSTEM_INCLUDE_DIRS: &[&str] = &["/usr/include", "/usr/local/include"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=ASTERISK_INCLUDE_DIR");
    println!("cargo:rerun-if-changed=src/asterisk/glue.c");
    println!("cargo:rerun-if-changed=src/asterisk/glue.h");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=src/pjsip");

    let (include_dir, installed) = asterisk_headers(&manifest);
    println!(
        "cargo:warning=building against {} Asterisk headers in {}",
        if installed {
            "installed"
        } else {
            "the project's own"
        },
        include_dir.display()
    );

    compile_glue(&manifest, &include_dir, installed, &out);
    build_pjsip_module(&manifest, &include_dir, installed, &out);
    generate_bindings(&manifest, &include_dir, installed, &out);
}

fn asterisk_headers(manifest: &Path) -> (PathBuf, bool) {
    if let Some(dir) = env::var_os("ASTERISK_INCLUDE_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("asterisk.h").is_file() {
            panic!("ASTERISK_INCLUDE_DIR={} has no asterisk.h", dir.display());
        }
        return (dir, true);
    }
    for dir in SYSTEM_INCLUDE_DIRS {
        let dir = Path::new(dir);
        if dir.join("asterisk.h").is_file() && dir.join("asterisk/buildopts.h").is_file() {
            return (dir.to_path_buf(), true);
        }
    }
    (manifest.join("include"), false)
}

fn compile_glue(manifest: &Path, include_dir: &Path, installed: bool, out: &Path) {
    let mut build = cc::Build::new();
    build
        .file(manifest.join("src/asterisk/glue.c"))
        .include(manifest.join("src/asterisk"))
        .define("_GNU_SOURCE", None)
        .define("_REENTRANT", None)
        .pic(true)
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .cargo_metadata(false);
    if installed {
        // Asterisk's own headers are not ours to keep warning-free.
        build.flag(format!("-isystem{}", include_dir.display()));
        build.define("ASTDB_CLUSTER_INSTALLED_HEADERS", None);
    } else {
        build.include(include_dir);
    }
    build.compile("astdb_cluster_glue");
    // Only the cdylib gets the glue, whole: nothing in Rust references its
    // constructor, which registers the module with Asterisk during dlopen. Test
    // and bench binaries never link it, so they need no Asterisk symbols.
    let lib = out.join("libastdb_cluster_glue.a");
    println!("cargo:rustc-link-arg-cdylib=-Wl,--whole-archive");
    println!("cargo:rustc-link-arg-cdylib={}", lib.display());
    println!("cargo:rustc-link-arg-cdylib=-Wl,--no-whole-archive");
    // res_astdb_cluster_pjsip.so finds this library, already loaded, by this name.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-soname,res_astdb_cluster.so");
}

/// res_astdb_cluster_pjsip.so, the small C module that holds the res_pjsip side
/// (src/pjsip), beside the library in the profile's folder (target/release).
fn build_pjsip_module(manifest: &Path, include_dir: &Path, installed: bool, out: &Path) {
    let compiler = cc::Build::new().pic(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.arg("-shared")
        .arg("-fPIC")
        .arg("-O2")
        .arg("-g")
        .arg("-Wall")
        .arg("-Wno-unused-parameter")
        .arg("-D_GNU_SOURCE")
        .arg("-D_REENTRANT")
        .arg(format!("-I{}", manifest.join("src/pjsip").display()));
    if installed {
        cmd.arg(format!("-isystem{}", include_dir.display()))
            .arg("-DASTDB_CLUSTER_INSTALLED_HEADERS");
    } else {
        cmd.arg(format!("-I{}", include_dir.display()));
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is under the profile's folder");
    let so = profile_dir.join("res_astdb_cluster_pjsip.so");
    cmd.arg("-o")
        .arg(&so)
        .arg(manifest.join("src/pjsip/res_astdb_cluster_pjsip.c"))
        .arg("-ldl")
        .arg("-lpthread");
    let status = cmd.status().expect("run the C compiler");
    if !status.success() {
        panic!("compiling res_astdb_cluster_pjsip.so failed");
    }
}

fn generate_bindings(manifest: &Path, include_dir: &Path, installed: bool, out: &Path) {
    let wrapper = out.join("wrapper.h");
    std::fs::write(
        &wrapper,
        "#define AST_MODULE \"res_astdb_cluster\"\n\
         #define AST_MODULE_SELF_SYM __internal_res_astdb_cluster_self\n\
         #include \"asterisk.h\"\n\
         #include \"asterisk/astdb.h\"\n\
         #include \"asterisk/config.h\"\n\
         #include \"asterisk/paths.h\"\n\
         #include \"asterisk/utils.h\"\n\
         #include \"glue.h\"\n",
    )
    .expect("write wrapper.h");
    let mut builder = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_arg(format!("-I{}", include_dir.display()))
        .clang_arg(format!("-I{}", manifest.join("src/asterisk").display()))
        .clang_arg("-D_GNU_SOURCE")
        .allowlist_function("ast_db_.*")
        .allowlist_function("ast_config_load2|ast_config_destroy|ast_category_browse|ast_variable_browse")
        .allowlist_function("ast_eid_to_str")
        .allowlist_function("astdb_cluster_.*")
        .allowlist_var("ASTDB_CLUSTER_(CAPTURE|EVENT)_.*")
        .allowlist_var("ast_eid_default|ast_config_AST_DB|ast_config_AST_CONFIG_DIR|ast_config_AST_DATA_DIR")
        .allowlist_type("ast_db_entry|ast_variable|ast_flags|ast_eid")
        // The callbacks Rust itself defines for the glue.
        .blocklist_function(
            "astdb_cluster_(load|unload|reload|function_read|function_write|cli_count|cli_command|cli_summary|cli_usage|cli_exec|cli_complete|db_written|ami_count|ami_name|ami_authority|ami_exec|event_render|event_text_free|event_drop)",
        )
        .layout_tests(false)
        .generate_comments(false);
    if installed {
        // Asterisk's utils.h uses a Clang block type.
        builder = builder.clang_arg("-fblocks");
    }
    let bindings = builder
        .generate()
        .expect("bindgen could not read the Asterisk headers");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
