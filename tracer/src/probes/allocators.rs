//! Allocator entry points in the target's ELF objects: which functions allocate and free, how each takes its
//! arguments ([`AllocCookie`]), and where to attach a uprobe to each (a file offset).
//!
//! The table covers the C library API (glibc's names, also implemented by the allocators that override
//! them), mimalloc 2.x and 3.x, jemalloc (unprefixed, `je_` and Rust's `_rjem_` prefixes), gperftools'
//! tcmalloc (`tc_*`) and C++'s operator new and delete. Discovery reads an object's `.symtab` and
//! `.dynsym` (defined functions only), matches the table, and folds aliases (several names at one address)
//! into one entry point.
//!
//! Entry points nest: glibc's `realloc(NULL, n)` calls `malloc`, libstdc++'s `operator new` calls `malloc`
//! and its sized delete calls the unsized one, mimalloc's `valloc` override calls `mi_valloc`, mimalloc 3's
//! `mi_malloc_aligned` tail-calls `mi_theap_malloc_aligned`. Probing all of them sees such an allocation
//! more than once: the kernel side must count only the outermost allocator call of a thread.
//!
//! Functions that may throw a C++ exception (operator new, mi_new, tc_new: [`EntryPoint::throws`]) must get
//! no return probe: an exception crossing a uretprobe'd frame makes the target call std::terminate.
#![allow(dead_code)] // The collector wires this in next.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::OnceLock,
};

use anyhow::{Result, anyhow, bail};
use object::{
    Endianness, Object, ObjectSection, ObjectSymbol,
    elf::{PF_X, PT_LOAD, STB_LOCAL, STT_FUNC, STT_GNU_IFUNC},
    read::elf::{ElfFile64, ProgramHeader as _, Sym as _},
};
use serde::Serialize;
use tracer_common::alloc::{AllocCookie, AllocShape};

use crate::procfs::{
    maps::MemoryMap,
    untrusted::{self, Cap, FileBytes, Origin},
};

// ------------------------------------------------------------------------------------------------------
// The table
// ------------------------------------------------------------------------------------------------------

/// Who implements an entry point, as named in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    /// glibc's malloc. In the table: the C library's allocation API (`malloc`, `free`, ...), whoever
    /// implements it; discovery re-attributes these names to the allocator that defines them (see
    /// [`discover_in_file`]).
    #[serde(rename = "glibc")]
    Glibc,
    /// The C allocation API implemented by something that is neither glibc nor a known allocator: musl, a
    /// custom allocator, an interposer.
    #[serde(rename = "libc")]
    Libc,
    #[serde(rename = "mimalloc")]
    Mimalloc,
    #[serde(rename = "jemalloc")]
    Jemalloc,
    /// gperftools' tcmalloc (the `tc_*` API).
    #[serde(rename = "tcmalloc")]
    Tcmalloc,
    /// C++ operator new and delete (libstdc++'s, or an executable's own).
    #[serde(rename = "c++")]
    Cxx,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Glibc => "glibc",
            Self::Libc => "libc",
            Self::Mimalloc => "mimalloc",
            Self::Jemalloc => "jemalloc",
            Self::Tcmalloc => "tcmalloc",
            Self::Cxx => "c++",
        }
    }

    /// An allocator library's own API, as opposed to the standard C and C++ names anyone may define.
    pub const fn is_allocator_specific(self) -> bool {
        matches!(self, Self::Mimalloc | Self::Jemalloc | Self::Tcmalloc)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One allocator function: its symbol name, its family and how it takes its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocFunction {
    pub name: &'static str,
    pub family: Family,
    pub cookie: AllocCookie,
    /// An implementation name (`__libc_malloc`, `__posix_memalign`) rather than the public API: when both
    /// sit at one address, the public name is the one reported.
    pub internal: bool,
    /// May throw a C++ exception (std::bad_alloc, or whatever the new_handler throws). Never put a return
    /// probe on such a function: when it throws, the C++ unwinder meets the kernel's uretprobe trampoline
    /// where the return address was, finds no unwind information, and the target calls std::terminate (seen
    /// with tests/fixtures/allocs_cpp.cpp's nothrow_new_failed). Take its result from the malloc it calls.
    pub throws: bool,
}

const fn func(name: &'static str, family: Family, cookie: AllocCookie) -> AllocFunction {
    AllocFunction { name, family, cookie, internal: false, throws: false }
}

const fn internal(name: &'static str, family: Family, cookie: AllocCookie) -> AllocFunction {
    AllocFunction { name, family, cookie, internal: true, throws: false }
}

/// A C++ allocation function that reports failure by throwing.
const fn throwing(name: &'static str, family: Family, cookie: AllocCookie) -> AllocFunction {
    AllocFunction { name, family, cookie, internal: false, throws: true }
}

// Cookie shorthands; arguments are 0-based argument register indices.
/// Returns a new block of `arg[size]` bytes.
const fn malloc(size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::Malloc, 0, size, 0)
}
/// Returns a new block of `arg[count] * arg[size]` bytes.
const fn calloc(count: u8, size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::Calloc, 0, size, count)
}
/// Resizes `arg[ptr]` to `arg[size]` bytes.
const fn realloc(ptr: u8, size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::Realloc, ptr, size, 0)
}
/// Resizes `arg[ptr]` to `arg[count] * arg[size]` bytes.
const fn realloc_array(ptr: u8, count: u8, size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::ReallocArray, ptr, size, count)
}
/// Stores a new block of `arg[size]` bytes through `arg[ptr]`, returns 0 on success.
const fn posix_memalign(ptr: u8, size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::PosixMemalign, ptr, size, 0)
}
/// Frees `arg[ptr]`.
const fn free(ptr: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::Free, ptr, 0, 0)
}
/// Resizes `arg[ptr]` in place, returns the new usable size (jemalloc's xallocx).
const fn resize_in_place(ptr: u8, size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::ResizeInPlace, ptr, size, 0)
}
/// Resizes `arg[ptr]` in place to `arg[size]` bytes, returns ptr or NULL (mimalloc's mi_expand).
const fn expand_in_place(ptr: u8, size: u8) -> AllocCookie {
    AllocCookie::new(AllocShape::ExpandInPlace, ptr, size, 0)
}
/// Frees the blocks of the thread's own cache, which the program freed before (glibc's tcache at a thread's
/// exit): the frees inside are not the program's.
const fn releases_cache() -> AllocCookie {
    AllocCookie::new(AllocShape::ReleasesCache, 0, 0, 0)
}

use Family::{Cxx, Glibc, Jemalloc, Mimalloc, Tcmalloc};

/// The C library's allocation API. Listed in order of preference among aliases: glibc's `aligned_alloc`
/// and `memalign` share an address, and `aligned_alloc` names it.
pub static C_FUNCTIONS: &[AllocFunction] = &[
    func("malloc", Glibc, malloc(0)),
    func("calloc", Glibc, calloc(0, 1)),
    func("realloc", Glibc, realloc(0, 1)),
    func("reallocarray", Glibc, realloc_array(0, 1, 2)),
    func("free", Glibc, free(0)),
    func("posix_memalign", Glibc, posix_memalign(0, 2)),
    func("aligned_alloc", Glibc, malloc(1)),
    func("memalign", Glibc, malloc(1)),
    func("valloc", Glibc, malloc(0)),
    func("pvalloc", Glibc, malloc(0)),
    func("cfree", Glibc, free(0)),
    // C23, defined by jemalloc 5.3+ and newer C libraries.
    func("free_sized", Glibc, free(0)),
    func("free_aligned_sized", Glibc, free(0)), // (ptr, alignment, size)
    // BSD's reallocf (frees ptr when it fails) and vfree, as defined by mimalloc's override.
    func("reallocf", Glibc, realloc(0, 1)),
    func("vfree", Glibc, free(0)),
    // glibc's implementation names, also defined as aliases by jemalloc's and mimalloc's overrides.
    internal("__libc_malloc", Glibc, malloc(0)),
    internal("__libc_calloc", Glibc, calloc(0, 1)),
    internal("__libc_realloc", Glibc, realloc(0, 1)),
    internal("__libc_free", Glibc, free(0)),
    internal("__libc_cfree", Glibc, free(0)),
    internal("__libc_memalign", Glibc, malloc(1)),
    internal("__libc_valloc", Glibc, malloc(0)),
    internal("__libc_pvalloc", Glibc, malloc(0)),
    internal("__posix_memalign", Glibc, posix_memalign(0, 2)),
    internal("__libc_free_sized", Glibc, free(0)),
    internal("__libc_free_aligned_sized", Glibc, free(0)),
    // At a thread's exit, glibc frees the blocks in the thread's cache (tcache) through free: blocks the
    // program freed already. A local symbol, found in glibc's debug file.
    internal("__malloc_arena_thread_freeres", Glibc, releases_cache()),
];

/// C++'s replaceable operator new and delete, Itanium-mangled for a 64-bit `size_t` (`m`). Every form takes
/// the size (new) or the pointer (delete) first; alignment, size and nothrow_t follow.
pub static CXX_FUNCTIONS: &[AllocFunction] = &[
    throwing("_Znwm", Cxx, malloc(0)),                          // new(size)
    throwing("_Znam", Cxx, malloc(0)),                          // new[](size)
    func("_ZnwmRKSt9nothrow_t", Cxx, malloc(0)),                // new(size, nothrow)
    func("_ZnamRKSt9nothrow_t", Cxx, malloc(0)),                // new[](size, nothrow)
    throwing("_ZnwmSt11align_val_t", Cxx, malloc(0)),           // new(size, align)
    throwing("_ZnamSt11align_val_t", Cxx, malloc(0)),           // new[](size, align)
    func("_ZnwmSt11align_val_tRKSt9nothrow_t", Cxx, malloc(0)), // new(size, align, nothrow)
    func("_ZnamSt11align_val_tRKSt9nothrow_t", Cxx, malloc(0)), // new[](size, align, nothrow)
    func("_ZdlPv", Cxx, free(0)),                               // delete(ptr)
    func("_ZdaPv", Cxx, free(0)),                               // delete[](ptr)
    func("_ZdlPvm", Cxx, free(0)),                              // delete(ptr, size)
    func("_ZdaPvm", Cxx, free(0)),                              // delete[](ptr, size)
    func("_ZdlPvRKSt9nothrow_t", Cxx, free(0)),                 // delete(ptr, nothrow)
    func("_ZdaPvRKSt9nothrow_t", Cxx, free(0)),                 // delete[](ptr, nothrow)
    func("_ZdlPvSt11align_val_t", Cxx, free(0)),                // delete(ptr, align)
    func("_ZdaPvSt11align_val_t", Cxx, free(0)),                // delete[](ptr, align)
    func("_ZdlPvmSt11align_val_t", Cxx, free(0)),               // delete(ptr, size, align)
    func("_ZdaPvmSt11align_val_t", Cxx, free(0)),               // delete[](ptr, size, align)
    func("_ZdlPvSt11align_val_tRKSt9nothrow_t", Cxx, free(0)),  // delete(ptr, align, nothrow)
    func("_ZdaPvSt11align_val_tRKSt9nothrow_t", Cxx, free(0)),  // delete[](ptr, align, nothrow)
];

/// mimalloc's public allocation API, 2.x and 3.x (`include/mimalloc.h`): the standard, extended, aligned,
/// zero-initialising, heap (`mi_heap_*`, heap first), thread-local heap (3.x `mi_theap_*`, theap first),
/// block-size returning (`mi_u*`), POSIX and C++ (`mi_new*`) functions.
pub static MIMALLOC_FUNCTIONS: &[AllocFunction] = &[
    // Standard.
    func("mi_malloc", Mimalloc, malloc(0)),
    func("mi_calloc", Mimalloc, calloc(0, 1)),
    func("mi_realloc", Mimalloc, realloc(0, 1)),
    func("mi_expand", Mimalloc, expand_in_place(0, 1)),
    func("mi_free", Mimalloc, free(0)),
    // Extended.
    func("mi_malloc_small", Mimalloc, malloc(0)),
    func("mi_zalloc_small", Mimalloc, malloc(0)),
    func("mi_zalloc", Mimalloc, malloc(0)),
    func("mi_mallocn", Mimalloc, calloc(0, 1)),
    func("mi_reallocn", Mimalloc, realloc_array(0, 1, 2)),
    func("mi_reallocf", Mimalloc, realloc(0, 1)), // frees p when it fails
    func("mi_free_small", Mimalloc, free(0)),
    // Aligned: (size, alignment[, offset]); alignment follows size, unlike posix_memalign.
    func("mi_malloc_aligned", Mimalloc, malloc(0)),
    func("mi_malloc_aligned_at", Mimalloc, malloc(0)),
    func("mi_zalloc_aligned", Mimalloc, malloc(0)),
    func("mi_zalloc_aligned_at", Mimalloc, malloc(0)),
    func("mi_calloc_aligned", Mimalloc, calloc(0, 1)),
    func("mi_calloc_aligned_at", Mimalloc, calloc(0, 1)),
    func("mi_realloc_aligned", Mimalloc, realloc(0, 1)),
    func("mi_realloc_aligned_at", Mimalloc, realloc(0, 1)),
    // Zero-initialised reallocation.
    func("mi_rezalloc", Mimalloc, realloc(0, 1)),
    func("mi_recalloc", Mimalloc, realloc_array(0, 1, 2)),
    func("mi_rezalloc_aligned", Mimalloc, realloc(0, 1)),
    func("mi_rezalloc_aligned_at", Mimalloc, realloc(0, 1)),
    func("mi_recalloc_aligned", Mimalloc, realloc_array(0, 1, 2)),
    func("mi_recalloc_aligned_at", Mimalloc, realloc_array(0, 1, 2)),
    // Returning the block size through a trailing pointer (2.2+).
    func("mi_umalloc", Mimalloc, malloc(0)),
    func("mi_ucalloc", Mimalloc, calloc(0, 1)),
    func("mi_urealloc", Mimalloc, realloc(0, 1)),
    func("mi_ufree", Mimalloc, free(0)),
    func("mi_umalloc_aligned", Mimalloc, malloc(0)),
    func("mi_uzalloc_aligned", Mimalloc, malloc(0)),
    func("mi_umalloc_small", Mimalloc, malloc(0)),
    func("mi_uzalloc_small", Mimalloc, malloc(0)),
    // Heaps: the heap comes first.
    func("mi_heap_malloc", Mimalloc, malloc(1)),
    func("mi_heap_zalloc", Mimalloc, malloc(1)),
    func("mi_heap_calloc", Mimalloc, calloc(1, 2)),
    func("mi_heap_mallocn", Mimalloc, calloc(1, 2)),
    func("mi_heap_malloc_small", Mimalloc, malloc(1)),
    func("mi_heap_zalloc_small", Mimalloc, malloc(1)),
    func("mi_heap_realloc", Mimalloc, realloc(1, 2)),
    func("mi_heap_reallocn", Mimalloc, realloc_array(1, 2, 3)),
    func("mi_heap_reallocf", Mimalloc, realloc(1, 2)),
    func("mi_heap_malloc_aligned", Mimalloc, malloc(1)),
    func("mi_heap_malloc_aligned_at", Mimalloc, malloc(1)),
    func("mi_heap_zalloc_aligned", Mimalloc, malloc(1)),
    func("mi_heap_zalloc_aligned_at", Mimalloc, malloc(1)),
    func("mi_heap_calloc_aligned", Mimalloc, calloc(1, 2)),
    func("mi_heap_calloc_aligned_at", Mimalloc, calloc(1, 2)),
    func("mi_heap_realloc_aligned", Mimalloc, realloc(1, 2)),
    func("mi_heap_realloc_aligned_at", Mimalloc, realloc(1, 2)),
    func("mi_heap_rezalloc", Mimalloc, realloc(1, 2)),
    func("mi_heap_recalloc", Mimalloc, realloc_array(1, 2, 3)),
    func("mi_heap_rezalloc_aligned", Mimalloc, realloc(1, 2)),
    func("mi_heap_rezalloc_aligned_at", Mimalloc, realloc(1, 2)),
    func("mi_heap_recalloc_aligned", Mimalloc, realloc_array(1, 2, 3)),
    func("mi_heap_recalloc_aligned_at", Mimalloc, realloc_array(1, 2, 3)),
    throwing("mi_heap_alloc_new", Mimalloc, malloc(1)),
    throwing("mi_heap_alloc_new_n", Mimalloc, calloc(1, 2)),
    // Thread-local heaps (3.x): the theap comes first.
    func("mi_theap_malloc", Mimalloc, malloc(1)),
    func("mi_theap_zalloc", Mimalloc, malloc(1)),
    func("mi_theap_calloc", Mimalloc, calloc(1, 2)),
    func("mi_theap_malloc_small", Mimalloc, malloc(1)),
    func("mi_theap_zalloc_small", Mimalloc, malloc(1)),
    func("mi_theap_malloc_aligned", Mimalloc, malloc(1)),
    func("mi_theap_realloc", Mimalloc, realloc(1, 2)),
    // POSIX, BSD and Windows-compatible names.
    func("mi_cfree", Mimalloc, free(0)),
    func("mi__expand", Mimalloc, expand_in_place(0, 1)),
    func("mi_posix_memalign", Mimalloc, posix_memalign(0, 2)),
    func("mi_memalign", Mimalloc, malloc(1)),
    func("mi_valloc", Mimalloc, malloc(0)),
    func("mi_pvalloc", Mimalloc, malloc(0)),
    func("mi_aligned_alloc", Mimalloc, malloc(1)),
    func("mi_reallocarray", Mimalloc, realloc_array(0, 1, 2)),
    func("mi_aligned_recalloc", Mimalloc, realloc_array(0, 1, 2)),
    func("mi_aligned_offset_recalloc", Mimalloc, realloc_array(0, 1, 2)),
    func("mi_free_size", Mimalloc, free(0)),
    func("mi_free_size_aligned", Mimalloc, free(0)),
    func("mi_free_aligned", Mimalloc, free(0)),
    // C++ (throwing on failure unless _nothrow).
    throwing("mi_new", Mimalloc, malloc(0)),
    throwing("mi_new_aligned", Mimalloc, malloc(0)),
    func("mi_new_nothrow", Mimalloc, malloc(0)),
    func("mi_new_aligned_nothrow", Mimalloc, malloc(0)),
    throwing("mi_new_n", Mimalloc, calloc(0, 1)),
    throwing("mi_new_realloc", Mimalloc, realloc(0, 1)),
    throwing("mi_new_reallocn", Mimalloc, realloc_array(0, 1, 2)),
];

/// Builds jemalloc's table: its own functions unprefixed, and every public function with the `je_` prefix
/// (`--with-jemalloc-prefix=je_`, as Redis builds it) and with `_rjem_` (Rust's tikv-jemalloc-sys).
macro_rules! jemalloc_table {
    (own: [$($own:literal => $own_cookie:expr),* $(,)?], prefixed: [$($name:literal => $cookie:expr),* $(,)?]) => {
        &[
            $( func($own, Jemalloc, $own_cookie), )*
            $( func(concat!("je_", $name), Jemalloc, $cookie), )*
            $( func(concat!("_rjem_", $name), Jemalloc, $cookie), )*
        ]
    };
}

/// jemalloc's public API (`jemalloc_protos.h`). Unprefixed, its C library names are those of
/// [`C_FUNCTIONS`] (re-attributed to jemalloc by discovery).
pub static JEMALLOC_FUNCTIONS: &[AllocFunction] = jemalloc_table!(
    own: [
        "mallocx" => malloc(0),             // (size, flags)
        "rallocx" => realloc(0, 1),         // (ptr, size, flags); NULL on failure, ptr untouched
        "xallocx" => resize_in_place(0, 1), // (ptr, size, extra, flags) -> usable size
        "dallocx" => free(0),               // (ptr, flags)
        "sdallocx" => free(0),              // (ptr, size, flags)
    ],
    prefixed: [
        "malloc" => malloc(0),
        "calloc" => calloc(0, 1),
        "posix_memalign" => posix_memalign(0, 2),
        "aligned_alloc" => malloc(1),
        "realloc" => realloc(0, 1),
        "free" => free(0),
        "free_sized" => free(0),
        "free_aligned_sized" => free(0),
        "mallocx" => malloc(0),
        "rallocx" => realloc(0, 1),
        "xallocx" => resize_in_place(0, 1),
        "dallocx" => free(0),
        "sdallocx" => free(0),
        "memalign" => malloc(1),
        "valloc" => malloc(0),
        "pvalloc" => malloc(0),
    ]
);

/// gperftools' tcmalloc (`gperftools/tcmalloc.h`). The C++ forms take std::nothrow_t and std::align_val_t
/// after the size or pointer, as operator new and delete do.
pub static TCMALLOC_FUNCTIONS: &[AllocFunction] = &[
    func("tc_malloc", Tcmalloc, malloc(0)),
    func("tc_malloc_skip_new_handler", Tcmalloc, malloc(0)),
    func("tc_free", Tcmalloc, free(0)),
    func("tc_free_sized", Tcmalloc, free(0)),
    func("tc_free_aligned_sized", Tcmalloc, free(0)),
    func("tc_realloc", Tcmalloc, realloc(0, 1)),
    func("tc_calloc", Tcmalloc, calloc(0, 1)),
    func("tc_cfree", Tcmalloc, free(0)),
    func("tc_memalign", Tcmalloc, malloc(1)),
    func("tc_posix_memalign", Tcmalloc, posix_memalign(0, 2)),
    func("tc_valloc", Tcmalloc, malloc(0)),
    func("tc_pvalloc", Tcmalloc, malloc(0)),
    throwing("tc_new", Tcmalloc, malloc(0)),
    func("tc_new_nothrow", Tcmalloc, malloc(0)),
    func("tc_delete", Tcmalloc, free(0)),
    func("tc_delete_sized", Tcmalloc, free(0)),
    func("tc_delete_nothrow", Tcmalloc, free(0)),
    throwing("tc_newarray", Tcmalloc, malloc(0)),
    func("tc_newarray_nothrow", Tcmalloc, malloc(0)),
    func("tc_deletearray", Tcmalloc, free(0)),
    func("tc_deletearray_sized", Tcmalloc, free(0)),
    func("tc_deletearray_nothrow", Tcmalloc, free(0)),
    throwing("tc_new_aligned", Tcmalloc, malloc(0)),
    func("tc_new_aligned_nothrow", Tcmalloc, malloc(0)),
    func("tc_delete_aligned", Tcmalloc, free(0)),
    func("tc_delete_sized_aligned", Tcmalloc, free(0)),
    func("tc_delete_aligned_nothrow", Tcmalloc, free(0)),
    throwing("tc_newarray_aligned", Tcmalloc, malloc(0)),
    func("tc_newarray_aligned_nothrow", Tcmalloc, malloc(0)),
    func("tc_deletearray_aligned", Tcmalloc, free(0)),
    func("tc_deletearray_sized_aligned", Tcmalloc, free(0)),
    func("tc_deletearray_aligned_nothrow", Tcmalloc, free(0)),
];

/// Every family's functions. Among aliases, an allocator's own name wins over a C or C++ name, a public
/// name over an internal one ([`AllocFunction::internal`]), and then the earlier entry of this order.
pub static ALLOC_TABLES: &[&[AllocFunction]] =
    &[MIMALLOC_FUNCTIONS, JEMALLOC_FUNCTIONS, TCMALLOC_FUNCTIONS, C_FUNCTIONS, CXX_FUNCTIONS];

/// Every function of the table, in preference order.
pub fn alloc_functions() -> impl Iterator<Item = &'static AllocFunction> {
    ALLOC_TABLES.iter().flat_map(|table| table.iter())
}

/// The table indexed by name, with each function's preference rank (lower is preferred among aliases).
fn index() -> &'static HashMap<&'static str, (usize, &'static AllocFunction)> {
    static INDEX: OnceLock<HashMap<&'static str, (usize, &'static AllocFunction)>> = OnceLock::new();
    INDEX.get_or_init(|| alloc_functions().enumerate().map(|(rank, f)| (f.name, (rank, f))).collect())
}

/// A symbol name without its version (`malloc@@GLIBC_2.2.5`, `malloc@GLIBC_2.2.5` -> `malloc`).
pub fn unversioned(symbol: &str) -> &str {
    symbol.split_once('@').map_or(symbol, |(name, _)| name)
}

/// The table's function for a symbol name, versioned or not.
pub fn find_function(symbol: &str) -> Option<&'static AllocFunction> {
    index().get(unversioned(symbol)).map(|(_, f)| *f)
}

fn rank(function: &AllocFunction) -> (bool, bool, usize) {
    // An allocator's own name first (mi_malloc over its malloc alias), then public names over internal ones,
    // then table order.
    (!function.family.is_allocator_specific(), function.internal, index()[function.name].0)
}

// ------------------------------------------------------------------------------------------------------
// Discovery in one ELF file
// ------------------------------------------------------------------------------------------------------

/// Where to attach one allocator function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// The table name chosen among the aliases at this address (without a symbol version).
    pub name: String,
    pub family: Family,
    pub cookie: AllocCookie,
    /// The function's virtual address as linked (st_value).
    pub vaddr: u64,
    /// The file offset of its first instruction: what `UProbeAttachLocation::AbsoluteOffset` takes.
    pub file_offset: u64,
    /// Its size in bytes as the symbol gives it; 0: unknown (`--alloc-symbol`).
    pub size: u64,
    /// The other table names at the same address (`__libc_malloc`, or `malloc` for mimalloc's override).
    pub aliases: Vec<String>,
    /// Whether the function may throw (any of its names does): no return probe here, see
    /// [`AllocFunction::throws`].
    pub throws: bool,
}

/// How many defined function symbols an object's own symbol tables hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SymbolTables {
    pub symtab: usize,
    /// Local (static, hidden) functions in `.symtab`: every unstripped build has some (crt's
    /// `frame_dummy` at least); a `.symtab` without any only repeats the exports, as Bun's does.
    pub symtab_local: usize,
    pub dynsym: usize,
}

impl SymbolTables {
    pub fn is_stripped(&self) -> bool {
        self.symtab_local == 0
    }
}

/// The allocator entry points found in one ELF object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectAllocators {
    /// The path as the target knows it (from /proc/PID/maps or as given).
    pub path: PathBuf,
    /// The path this process read and the uprobes should name: differs from `path` under another root
    /// (`/proc/PID/root/...`) or for a deleted file (`/proc/PID/map_files/...`).
    pub attach_path: PathBuf,
    /// The object's own function symbols; all zero means stripped of every symbol.
    pub symbols: SymbolTables,
    /// Where extra symbols came from: `--symbols-from`, or a separate debug file found by build id.
    pub symbols_from: Option<PathBuf>,
    /// Sorted by address.
    pub entry_points: Vec<EntryPoint>,
    /// Allocators whose messages are in the file's read-only data though none of their functions was found
    /// (looked for in stripped files only): linked in statically, and stripped.
    pub unnamed_allocators: Vec<Family>,
    /// What was seen but not used, one sentence each (IFUNC resolvers, addresses outside code, aliases
    /// with different argument shapes).
    pub notes: Vec<String>,
}

impl ObjectAllocators {
    /// Stripped: no `.symtab`, or one that lists no local function (only the exports). Functions that are not
    /// exported are invisible without `--symbols-from`.
    pub fn is_stripped(&self) -> bool {
        self.symbols.is_stripped() && self.symbols_from.is_none()
    }

    /// No function symbol at all, not even exported ones.
    pub fn has_no_symbols(&self) -> bool {
        self.symbols == SymbolTables::default() && self.symbols_from.is_none()
    }

    pub fn find(&self, name: &str) -> Option<&EntryPoint> {
        self.entry_points.iter().find(|e| e.name == name)
    }
}

/// A loadable segment: how virtual addresses map to file offsets.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    offset: u64,
    file_size: u64,
    executable: bool,
}

/// The file offset of a virtual address in an executable PT_LOAD segment.
fn code_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| s.executable && vaddr >= s.vaddr && vaddr - s.vaddr < s.file_size)
        .map(|s| vaddr - s.vaddr + s.offset)
}

/// One parsed ELF file and what discovery needs of it.
struct Elf<'data> {
    file: ElfFile64<'data, Endianness>,
}

impl<'data> Elf<'data> {
    fn parse(data: &'data [u8], path: &Path) -> Result<Self> {
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| anyhow!("{} is not a 64-bit ELF file ({e})", path.display()))?;
        Ok(Self { file })
    }

    fn segments(&self) -> Vec<Segment> {
        let endian = self.file.endian();
        self.file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == PT_LOAD)
            .map(|ph| Segment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                file_size: ph.p_filesz(endian),
                executable: ph.p_flags(endian) & PF_X != 0,
            })
            .collect()
    }

    fn build_id(&self) -> Option<&'data [u8]> {
        self.file.build_id().ok().flatten()
    }

    /// The `.text` section's bytes, if the file holds them (a separate debug file does not).
    fn text(&self) -> Option<&'data [u8]> {
        self.file.section_by_name(".text").and_then(|s| s.data().ok()).filter(|d| !d.is_empty())
    }

    /// Allocators whose own message strings are in `.rodata`: mimalloc prints "mimalloc: ...", jemalloc
    /// "<jemalloc>: ...", tcmalloc "tcmalloc: ...".
    fn allocator_strings(&self) -> Vec<Family> {
        const MARKERS: &[(Family, &[u8])] =
            &[(Family::Mimalloc, b"mimalloc"), (Family::Jemalloc, b"<jemalloc>"), (Family::Tcmalloc, b"tcmalloc")];
        let rodata: Vec<&[u8]> = self
            .file
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with(".rodata")))
            .filter_map(|s| s.data().ok())
            .collect();
        MARKERS
            .iter()
            .filter(|(_, marker)| rodata.iter().any(|data| contains(data, marker)))
            .map(|(family, _)| *family)
            .collect()
    }

    /// Counts the defined function symbols of both tables, and collects those the table names.
    fn symbols(&self, found: &mut SymbolScan) {
        let endian = self.file.endian();
        for (dynamic, symbols) in [(false, self.file.symbols()), (true, self.file.dynamic_symbols())] {
            for symbol in symbols {
                let raw = symbol.elf_symbol();
                let kind = raw.st_type();
                if (kind != STT_FUNC && kind != STT_GNU_IFUNC) || raw.is_undefined(endian) || raw.st_value(endian) == 0
                {
                    continue;
                }
                if dynamic {
                    found.tables.dynsym += 1;
                } else {
                    found.tables.symtab += 1;
                    found.tables.symtab_local += usize::from(raw.st_bind() == STB_LOCAL);
                }
                let Ok(name) = symbol.name() else { continue };
                let name = unversioned(name);
                if matches!(name, "__libc_start_main" | "gnu_get_libc_version") {
                    found.libc_markers.insert(name.to_string());
                }
                let Some(function) = find_function(name) else { continue };
                if kind == STT_GNU_IFUNC {
                    found.notes.insert(format!(
                        "{name} is an IFUNC: its symbol is the resolver, not the function, so it is not probed"
                    ));
                    continue;
                }
                let vaddr = raw.st_value(endian);
                found.functions.entry(vaddr).or_default().insert(function.name);
                let size = found.sizes.entry(vaddr).or_default();
                *size = (*size).max(raw.st_size(endian));
            }
        }
    }
}

/// Table functions by address, gathered from one or more symbol sources.
#[derive(Default)]
struct SymbolScan {
    tables: SymbolTables,
    functions: BTreeMap<u64, BTreeSet<&'static str>>,
    /// The largest symbol size seen at each address (0: unknown).
    sizes: BTreeMap<u64, u64>,
    libc_markers: BTreeSet<String>,
    notes: BTreeSet<String>,
}

impl SymbolScan {
    /// Folds aliases, attributes families, and converts addresses with `segments` (the file whose code the
    /// target maps).
    fn entry_points(&self, segments: &[Segment]) -> (Vec<EntryPoint>, Vec<String>) {
        let mut notes: Vec<String> = self.notes.iter().cloned().collect();
        let groups: Vec<(u64, Vec<&'static AllocFunction>)> = self
            .functions
            .iter()
            .map(|(vaddr, names)| {
                let mut functions: Vec<_> = names.iter().map(|n| index()[n].1).collect();
                functions.sort_by_key(|f| rank(f));
                (*vaddr, functions)
            })
            .collect();
        let specific: BTreeSet<Family> = groups
            .iter()
            .flat_map(|(_, fs)| fs.iter().map(|f| f.family))
            .filter(|f| f.is_allocator_specific())
            .collect();
        // The C names belong to the C library when the object is one (it defines __libc_start_main, as
        // glibc, musl and every static executable do); else to the one allocator the object defines (its
        // overrides: jemalloc unprefixed, mimalloc's wrappers); else to something unknown.
        let c_family = if self.libc_markers.contains("__libc_start_main") {
            if self.libc_markers.contains("gnu_get_libc_version") { Family::Glibc } else { Family::Libc }
        } else if specific.len() == 1 {
            *specific.iter().next().unwrap()
        } else {
            Family::Libc
        };
        let mut entry_points = Vec::new();
        for (vaddr, functions) in groups {
            let chosen = functions[0];
            let Some(file_offset) = code_offset(segments, vaddr) else {
                notes.push(format!("{} at {vaddr:#x} is outside the executable segments: not probed", chosen.name));
                continue;
            };
            for other in &functions[1..] {
                if other.cookie != chosen.cookie {
                    notes.push(format!(
                        "{} aliases {} at {vaddr:#x} but takes its arguments differently: probed as {}",
                        other.name, chosen.name, chosen.name
                    ));
                }
            }
            let family = match chosen.family {
                Family::Glibc => c_family,
                family => family,
            };
            entry_points.push(EntryPoint {
                name: chosen.name.to_string(),
                family,
                cookie: chosen.cookie,
                vaddr,
                file_offset,
                size: self.sizes.get(&vaddr).copied().unwrap_or(0),
                aliases: functions[1..].iter().map(|f| f.name.to_string()).collect(),
                throws: functions.iter().any(|f| f.throws),
            });
        }
        (entry_points, notes)
    }
}

/// Searches a section that may be a hundred megabytes (Bun's): memchr's vectorized search, not a byte loop.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Stripped allocators: marker strings present, no entry point of that family.
fn unnamed_allocators(elf: &Elf, entry_points: &[EntryPoint]) -> Vec<Family> {
    elf.allocator_strings().into_iter().filter(|family| !entry_points.iter().any(|e| e.family == *family)).collect()
}

/// An ELF file, read whole: a regular file (a FIFO or a device is refused at once), at most [`Cap::ELF`].
fn read(path: &Path, origin: Origin) -> Result<FileBytes> {
    Ok(untrusted::read(path, origin, Cap::ELF)?)
}

/// The entry points of one ELF file, from its own symbols (and those of its separate debug file under
/// /usr/lib/debug/.build-id, when it is stripped and such a file exists).
///
/// A C library name (`malloc`, `free`...) is reported under the family that implements it: the allocator
/// whose function it aliases (mimalloc's `malloc` = `mi_malloc`); glibc (or "libc" for another C library)
/// in the C library itself; else the one allocator the object defines (unprefixed jemalloc, mimalloc's
/// wrapper overrides); else "libc".
pub fn discover_in_file(path: &Path) -> Result<ObjectAllocators> {
    discover_at(path, path, Origin::Operator, None)
}

/// [`discover_in_file`] reading `attach_path` (of `origin`) for the object the target knows as `path`;
/// `root` prefixes the debug file search.
fn discover_at(path: &Path, attach_path: &Path, origin: Origin, root: Option<&Path>) -> Result<ObjectAllocators> {
    let data = read(attach_path, origin)?;
    let elf = Elf::parse(&data, attach_path)?;
    let mut scan = SymbolScan::default();
    elf.symbols(&mut scan);
    let own_tables = scan.tables;
    let mut symbols_from = None;
    if own_tables.is_stripped() {
        if let Some(debug_path) = elf.build_id().and_then(|id| debug_file(id, root)) {
            // Under /proc/PID/root, the target's own files: a link there is not followed.
            let debug_origin = if root.is_some() { Origin::Target } else { Origin::Operator };
            if let Ok(debug_data) = read(&debug_path, debug_origin) {
                if let Ok(debug) = Elf::parse(&debug_data, &debug_path) {
                    if debug.build_id() == elf.build_id() {
                        debug.symbols(&mut scan);
                        symbols_from = Some(debug_path);
                    }
                }
            }
        }
    }
    let (entry_points, notes) = scan.entry_points(&elf.segments());
    let unnamed_allocators = if own_tables.is_stripped() && symbols_from.is_none() {
        unnamed_allocators(&elf, &entry_points)
    } else {
        Vec::new()
    };
    Ok(ObjectAllocators {
        path: path.to_path_buf(),
        attach_path: attach_path.to_path_buf(),
        symbols: own_tables,
        symbols_from,
        entry_points,
        unnamed_allocators,
        notes,
    })
}

/// `/usr/lib/debug/.build-id/ab/cdef....debug`, where Debian's -dbg/-dbgsym packages put separate symbols.
fn debug_file(build_id: &[u8], root: Option<&Path>) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    let relative = format!("usr/lib/debug/.build-id/{first:02x}/{}.debug", hex(rest));
    let path = root.unwrap_or(Path::new("/")).join(relative);
    path.is_file().then_some(path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------------------------------------------
// Stripped executables: --symbols-from and --alloc-symbol
// ------------------------------------------------------------------------------------------------------

/// FNV-1a, 64 bits: names a `.text` section in a message.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Refuses `unstripped` unless it is a build of the same binary as `stripped`: the same GNU build id when
/// both have one, otherwise identical `.text` bytes.
fn check_same_build(stripped_path: &Path, stripped: &Elf, unstripped_path: &Path, unstripped: &Elf) -> Result<()> {
    let (s, u) = (stripped_path.display(), unstripped_path.display());
    match (stripped.build_id(), unstripped.build_id()) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(a), Some(b)) => {
            bail!("--symbols-from {u} is not a build of {s}: their build ids differ ({} vs {})", hex(b), hex(a))
        }
        _ => match (stripped.text(), unstripped.text()) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(a), Some(b)) => bail!(
                "--symbols-from {u} is not a build of {s}: no common build id, and their .text sections differ \
                 ({} bytes, fnv1a {:016x} vs {} bytes, fnv1a {:016x})",
                b.len(),
                fnv1a(b),
                a.len(),
                fnv1a(a)
            ),
            _ => bail!(
                "cannot check that --symbols-from {u} is a build of {s}: not both have a build id, and not both \
                 have .text bytes to compare"
            ),
        },
    }
}

/// The entry points of a stripped `stripped` file, named by the symbols of `unstripped` (an unstripped build
/// of the same binary, or its separate debug file): addresses from `unstripped`, file offsets from
/// `stripped`'s program headers. Refuses (one-line error naming both files) when they are not the same build.
pub fn discover_with_symbols_from(stripped: &Path, unstripped: &Path) -> Result<ObjectAllocators> {
    discover_with_symbols_from_at(stripped, stripped, Origin::Operator, unstripped)
}

fn discover_with_symbols_from_at(
    path: &Path,
    attach_path: &Path,
    origin: Origin,
    unstripped: &Path,
) -> Result<ObjectAllocators> {
    // The operator's file first: a FIFO or a device there is the error to show, before anything is read.
    let unstripped_data = read(unstripped, Origin::Operator).map_err(|error| anyhow!("--symbols-from: {error:#}"))?;
    let stripped_data = read(attach_path, origin)?;
    let stripped_elf = Elf::parse(&stripped_data, attach_path)?;
    let unstripped_elf = Elf::parse(&unstripped_data, unstripped)?;
    check_same_build(path, &stripped_elf, unstripped, &unstripped_elf)?;
    let mut own = SymbolScan::default();
    stripped_elf.symbols(&mut own);
    let mut theirs = SymbolScan::default();
    unstripped_elf.symbols(&mut theirs);
    if theirs.tables.is_stripped() {
        bail!(
            "--symbols-from {} is stripped too (its .symtab lists no local function): give an unstripped build",
            unstripped.display()
        );
    }
    let own_tables = own.tables;
    // Both sources at once: the stripped file's exported functions and the unstripped file's all.
    let mut scan = own;
    for (vaddr, names) in theirs.functions {
        scan.functions.entry(vaddr).or_default().extend(names);
    }
    for (vaddr, size) in theirs.sizes {
        let known = scan.sizes.entry(vaddr).or_default();
        *known = (*known).max(size);
    }
    scan.libc_markers.extend(theirs.libc_markers);
    scan.notes.extend(theirs.notes);
    let (entry_points, notes) = scan.entry_points(&stripped_elf.segments());
    Ok(ObjectAllocators {
        path: path.to_path_buf(),
        attach_path: attach_path.to_path_buf(),
        symbols: own_tables,
        symbols_from: Some(unstripped.to_path_buf()),
        entry_points,
        unnamed_allocators: Vec::new(),
        notes,
    })
}

/// `--alloc-symbol NAME=ADDR`: a table function at a virtual address of the main executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocSymbol {
    pub function: &'static AllocFunction,
    pub vaddr: u64,
}

impl FromStr for AllocSymbol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_alloc_symbol(text)
    }
}

/// Parses `NAME=ADDR` (`mi_malloc=0x1234560`; ADDR is hexadecimal, `0x` optional).
pub fn parse_alloc_symbol(text: &str) -> Result<AllocSymbol, String> {
    let Some((name, address)) = text.split_once('=') else {
        return Err(format!("`{text}` is not NAME=ADDR (write it like mi_malloc=0x1234560)"));
    };
    let (name, address) = (name.trim(), address.trim());
    let Some(function) = find_function(name) else {
        return Err(format!(
            "`{name}` is not an allocator function dispatch-leaktrace knows (malloc, free, mi_malloc, mi_free, \
             je_mallocx, tc_malloc, _Znwm...); list the ones in an unstripped build with \
             `nm --defined-only BINARY | grep -E ' (mi_|je_|tc_|_Zn|_Zd|malloc|calloc|realloc|free)'`"
        ));
    };
    let digits = address.strip_prefix("0x").or_else(|| address.strip_prefix("0X")).unwrap_or(address);
    let vaddr = u64::from_str_radix(digits, 16)
        .ok()
        .filter(|_| !digits.is_empty())
        .ok_or_else(|| format!("`{address}` is not a hexadecimal address (write it like {name}=0x1234560)"))?;
    if vaddr == 0 {
        return Err(format!("{name}=0 is not a function address"));
    }
    Ok(AllocSymbol { function, vaddr })
}

/// Entry points for `--alloc-symbol` values, converted with `path`'s program headers. An address outside
/// the file's executable segments is an error.
pub fn entry_points_from_alloc_symbols(path: &Path, symbols: &[AllocSymbol]) -> Result<Vec<EntryPoint>> {
    entry_points_from_alloc_symbols_at(path, Origin::Operator, symbols)
}

fn entry_points_from_alloc_symbols_at(path: &Path, origin: Origin, symbols: &[AllocSymbol]) -> Result<Vec<EntryPoint>> {
    if symbols.is_empty() {
        return Ok(Vec::new());
    }
    let data = read(path, origin)?;
    let segments = Elf::parse(&data, path)?.segments();
    symbols
        .iter()
        .map(|symbol| {
            let file_offset = code_offset(&segments, symbol.vaddr).ok_or_else(|| {
                anyhow!(
                    "--alloc-symbol {}={:#x}: no code of {} is at that address (give the symbol's virtual \
                     address as `nm` prints it)",
                    symbol.function.name,
                    symbol.vaddr,
                    path.display()
                )
            })?;
            Ok(EntryPoint {
                name: symbol.function.name.to_string(),
                family: symbol.function.family,
                cookie: symbol.function.cookie,
                vaddr: symbol.vaddr,
                file_offset,
                size: 0,
                aliases: Vec::new(),
                throws: symbol.function.throws,
            })
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------------
// Discovery across a process
// ------------------------------------------------------------------------------------------------------

/// What the user told us about the target's main executable, and how to reach its files.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryOptions {
    /// The target's pid: deleted files are then read through /proc/PID/map_files.
    pub pid: Option<u32>,
    /// The main executable as the target's maps name it (from /proc/PID/exe; a " (deleted)" suffix is
    /// ignored); default: the lowest executable file mapping.
    pub main_executable: Option<PathBuf>,
    /// Prefix for every path, e.g. /proc/PID/root for a target in another mount namespace.
    pub root: Option<PathBuf>,
    /// `--symbols-from`: an unstripped build of the main executable.
    pub symbols_from: Option<PathBuf>,
    /// `--alloc-symbol`: functions at virtual addresses of the main executable.
    pub alloc_symbols: Vec<AllocSymbol>,
}

/// The entry points of every executable file the target maps.
#[derive(Clone, Debug, Default)]
pub struct ProcessAllocators {
    pub main_executable: Option<PathBuf>,
    /// In address order; the main executable is among them.
    pub objects: Vec<ObjectAllocators>,
    /// Objects that could not be read, with why.
    pub failures: Vec<(PathBuf, String)>,
}

impl ProcessAllocators {
    pub fn main(&self) -> Option<&ObjectAllocators> {
        let main = self.main_executable.as_ref()?;
        self.objects.iter().find(|o| &o.path == main)
    }

    pub fn entry_point_count(&self) -> usize {
        self.objects.iter().map(|o| o.entry_points.len()).sum()
    }
}

/// A file we can read that does not start like an ELF object. (One we cannot read is left to discovery,
/// which says why.)
fn is_readable_but_not_elf(path: &Path, origin: Origin) -> bool {
    let mut magic = [0u8; 4];
    untrusted::open(path, origin)
        .map_err(std::io::Error::from)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
        .is_ok()
        && magic != *b"\x7fELF"
}

/// Every distinct executable file mapping of the target (its executable and each shared library), with its
/// entry points. `--symbols-from` and `--alloc-symbol` apply to the main executable, and fail the whole
/// discovery when they do not fit it; a library that cannot be read is only listed in `failures`.
pub fn discover_in_process(map: &MemoryMap, options: &DiscoveryOptions) -> Result<ProcessAllocators> {
    let mut seen = BTreeSet::new();
    let mut mappings = Vec::new();
    for mapping in map.iter() {
        let path = mapping.file_path();
        if !mapping.executable || !mapping.is_file() || path.starts_with("/memfd:") || path.starts_with("/dev/") {
            continue;
        }
        if seen.insert((path.to_string(), mapping.inode)) {
            mappings.push(mapping);
        }
    }
    let main_executable = match &options.main_executable {
        Some(path) => Some(PathBuf::from(path.to_string_lossy().trim_end_matches(" (deleted)"))),
        None => mappings.first().map(|m| PathBuf::from(m.file_path())),
    };
    let mut result = ProcessAllocators { main_executable: main_executable.clone(), ..Default::default() };
    for mapping in mappings {
        let path = PathBuf::from(mapping.file_path());
        let deleted = mapping.pathname.ends_with(" (deleted)");
        let attach_path = match (deleted, options.pid) {
            (true, Some(pid)) => PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", mapping.start, mapping.end)),
            (true, None) => {
                result.failures.push((path, "deleted since it was mapped".to_string()));
                continue;
            }
            (false, _) => match &options.root {
                Some(root) => root.join(path.strip_prefix("/").unwrap_or(&path)),
                // A launched target's files, found before it runs: the command's executable may be a link
                // (on PATH); the file it leads to is read and probed.
                None => std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()),
            },
        };
        // The target's files: a link in their place is not followed, a map_files link is.
        let origin = Origin::of_target_path(&attach_path);
        let is_main = main_executable.as_ref() == Some(&path);
        // Executable mappings of files that are not ELF objects (a JIT dump's marker mapping) hold no code.
        if is_readable_but_not_elf(&attach_path, origin) {
            continue;
        }
        let discovered = match (&options.symbols_from, is_main) {
            (Some(unstripped), true) => discover_with_symbols_from_at(&path, &attach_path, origin, unstripped)?,
            _ => match discover_at(&path, &attach_path, origin, options.root.as_deref()) {
                Ok(object) => object,
                Err(error) => {
                    result.failures.push((path, format!("{error:#}")));
                    continue;
                }
            },
        };
        let mut object = discovered;
        if is_main && !options.alloc_symbols.is_empty() {
            for entry in entry_points_from_alloc_symbols_at(&attach_path, origin, &options.alloc_symbols)? {
                if !object.entry_points.iter().any(|e| e.vaddr == entry.vaddr) {
                    object.entry_points.push(entry);
                }
            }
            object.entry_points.sort_by_key(|e| e.vaddr);
        }
        result.objects.push(object);
    }
    if (options.symbols_from.is_some() || !options.alloc_symbols.is_empty()) && result.main().is_none() {
        let main = main_executable.map_or_else(|| "the main executable".to_string(), |p| p.display().to_string());
        bail!("--symbols-from and --alloc-symbol apply to {main}, which the target does not map as code");
    }
    Ok(result)
}

// ------------------------------------------------------------------------------------------------------
// Summary, for the start of a run and for report.json
// ------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyCount {
    pub family: Family,
    pub entry_points: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectSummary {
    pub path: String,
    pub main_executable: bool,
    /// "full" (a .symtab with local functions), "exports only" (stripped), "none", or "from PATH"
    /// (--symbols-from or a debug file).
    pub symbols: String,
    pub families: Vec<FamilyCount>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllocatorSummary {
    pub objects: Vec<ObjectSummary>,
    pub entry_points: usize,
    pub warnings: Vec<String>,
}

const HOW_TO_NAME_THEM: &str = "pass --symbols-from PATH (an unstripped build of the same binary) or \
                                --alloc-symbol NAME=ADDR (e.g. mi_malloc=0x1234560, addresses from `nm` on an \
                                unstripped build)";

/// Per object, which families and how many entry points; warnings when allocations may go unseen.
pub fn summarize(process: &ProcessAllocators) -> AllocatorSummary {
    let objects: Vec<ObjectSummary> = process
        .objects
        .iter()
        .map(|object| {
            let mut counts: BTreeMap<Family, usize> = BTreeMap::new();
            for entry in &object.entry_points {
                *counts.entry(entry.family).or_default() += 1;
            }
            let symbols = match (&object.symbols_from, object.symbols) {
                (Some(from), _) => format!("from {}", from.display()),
                (None, SymbolTables { symtab_local: 1.., .. }) => "full".to_string(),
                (None, SymbolTables { symtab: 1.., .. } | SymbolTables { dynsym: 1.., .. }) => {
                    "exports only".to_string()
                }
                (None, _) => "none".to_string(),
            };
            ObjectSummary {
                path: object.path.display().to_string(),
                main_executable: process.main_executable.as_ref() == Some(&object.path),
                symbols,
                families: counts
                    .into_iter()
                    .map(|(family, entry_points)| FamilyCount { family, entry_points })
                    .collect(),
                notes: object.notes.clone(),
            }
        })
        .collect();
    let main_name =
        process.main_executable.as_ref().map_or_else(|| "the executable".to_string(), |p| p.display().to_string());
    let mut warnings = Vec::new();
    let entry_points = process.entry_point_count();
    if entry_points == 0 {
        warnings.push(format!(
            "no allocator entry point (malloc, mimalloc, jemalloc, tcmalloc, operator new) found in {main_name} or \
             its {} libraries: heap allocations will not be traced, only mmap and brk; if the allocator is linked \
             into a stripped executable, {HOW_TO_NAME_THEM}",
            process.objects.len().saturating_sub(1)
        ));
    }
    for object in &process.objects {
        if !object.unnamed_allocators.is_empty() {
            let names: Vec<&str> = object.unnamed_allocators.iter().map(|f| f.name()).collect();
            warnings.push(format!(
                "{} is stripped and has {} linked in (its messages are in the file) without symbols for \
                 its functions: its allocations will be missed; {HOW_TO_NAME_THEM}",
                object.path.display(),
                names.join(" and ")
            ));
        }
    }
    for object in process.objects.iter().filter(|o| o.has_no_symbols()) {
        if process.main_executable.as_ref() != Some(&object.path) {
            warnings.push(format!("{} has no symbols at all: allocators in it cannot be found", object.path.display()));
        }
    }
    for (path, error) in &process.failures {
        warnings.push(format!("{}: not searched for allocators: {error}", path.display()));
    }
    AllocatorSummary { objects, entry_points, warnings }
}

impl AllocatorSummary {
    /// Lines to print at the start of a run: objects with entry points (and the main executable), then the
    /// warnings.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for object in &self.objects {
            if object.families.is_empty() && !object.main_executable {
                continue;
            }
            let families = if object.families.is_empty() {
                "no allocator".to_string()
            } else {
                object
                    .families
                    .iter()
                    .map(|c| {
                        format!(
                            "{} ({} entry point{})",
                            c.family,
                            c.entry_points,
                            if c.entry_points == 1 { "" } else { "s" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            lines.push(format!("allocators in {}: {families} [symbols: {}]", object.path, object.symbols));
        }
        lines.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        lines
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, process::Command, sync::Mutex};

    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

    /// A fresh folder for one test's files.
    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leaktrace-allocators-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn run(command: &mut Command) {
        let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// An executable that defines allocator functions itself, the way a program that links mimalloc
    /// statically does: aliases (mimalloc's `malloc` and `operator new` overrides), a wrapper, hidden and
    /// local functions, a versioned name, an IFUNC, a data symbol with a table name, and an import (calloc).
    /// Linked without PIE, so virtual addresses (0x401000...) differ from file offsets (0x1000...).
    const FAKE_MIMALLOC: &str = r#"
#include <stddef.h>
#include <string.h>
void *calloc(size_t, size_t);
static char arena[1 << 16];
static size_t used;
void *mi_malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~(size_t)15; return p; }
void *malloc(size_t n) __attribute__((alias("mi_malloc")));
void mi_free(void *p) { (void)p; VARIANT }
void free(void *p) __attribute__((alias("mi_free")));
void *mi_heap_calloc(void *heap, size_t count, size_t size) {
    (void)heap; void *p = mi_malloc(count * size); memset(p, 0, count * size); return p;
}
void *mi_new(size_t n) { return mi_malloc(n); }
void *_Znwm(size_t n) __attribute__((alias("mi_new")));
void *_Znam(size_t n) __attribute__((alias("mi_new")));
void *valloc(size_t n) { return mi_malloc(n); }
__attribute__((visibility("hidden"))) void *mi_zalloc(size_t n) { return mi_heap_calloc(0, 1, n); }
__attribute__((used)) static void *mi_mallocn(size_t count, size_t size) { return mi_malloc(count * size); }
void *mi_realloc_v1(void *p, size_t n) { (void)p; return mi_malloc(n); }
#ifndef NO_SYMVER
__asm__(".symver mi_realloc_v1, mi_realloc@LEAK_1.0");
#endif
static void *resolve_tc_malloc(void) { return (void *)mi_malloc; }
void *tc_malloc(size_t n) __attribute__((ifunc("resolve_tc_malloc")));
void *tc_free = 0;
const char banner[] = "mimalloc: a fake for the tests";
int main(int argc, char **argv) { (void)argv; return calloc(argc, 8) != 0; }
"#;

    /// Compiles [`FAKE_MIMALLOC`] into `dir/name`; `variant` changes mi_free's code.
    fn fake_mimalloc(dir: &Path, name: &str, variant: &str, extra: &[&str]) -> PathBuf {
        let source = dir.join(format!("{name}.c"));
        fs::write(&source, FAKE_MIMALLOC.replace("VARIANT", variant)).unwrap();
        let script = dir.join("versions.map");
        fs::write(&script, "LEAK_1.0 { global: mi_realloc; };\n").unwrap();
        let binary = dir.join(name);
        run(Command::new("cc")
            .args(["-O0", "-g", "-no-pie", "-fno-pie", "-w"])
            .arg(format!("-Wl,--version-script={}", script.display()))
            .args(extra)
            .arg("-o")
            .arg(&binary)
            .arg(&source));
        binary
    }

    fn strip_copy(binary: &Path, stripped: &Path) {
        run(Command::new("objcopy").arg("--strip-all").arg(binary).arg(stripped));
    }

    /// The file offset must hold the same bytes as the section that contains the virtual address.
    fn assert_points_at_code(path: &Path, entry: &EntryPoint) {
        let data = fs::read(path).unwrap();
        let elf = Elf::parse(&data, path).unwrap();
        let section = elf
            .file
            .sections()
            .find(|s| s.address() <= entry.vaddr && entry.vaddr < s.address() + s.size())
            .unwrap_or_else(|| panic!("no section holds {} at {:#x}", entry.name, entry.vaddr));
        let code = &section.data().unwrap()[(entry.vaddr - section.address()) as usize..];
        let len = code.len().min(16);
        assert!(len > 0);
        assert_eq!(
            &data[entry.file_offset as usize..entry.file_offset as usize + len],
            &code[..len],
            "{} in {}: file offset {:#x} does not hold the code at {:#x}",
            entry.name,
            path.display(),
            entry.file_offset,
            entry.vaddr
        );
    }

    fn names(object: &ObjectAllocators) -> Vec<&str> {
        object.entry_points.iter().map(|e| e.name.as_str()).collect()
    }

    fn cookie(shape: AllocShape, ptr: u8, size: u8, count: u8) -> AllocCookie {
        AllocCookie::new(shape, ptr, size, count)
    }

    #[test]
    fn the_table_names_each_function_once_with_arguments_in_registers() {
        let mut seen = BTreeSet::new();
        for function in alloc_functions() {
            assert!(seen.insert(function.name), "{} is listed twice", function.name);
            let c = function.cookie;
            // Six argument registers on x86-64 and arm64 (both take more, but no allocator needs more).
            assert!(c.ptr_arg < 6 && c.size_arg < 6 && c.count_arg < 6, "{}", function.name);
            assert_eq!(AllocCookie::decode(c.encode()), Some(c));
        }
        assert_eq!(find_function("malloc@@GLIBC_2.2.5").unwrap().name, "malloc");
        assert_eq!(find_function("cfree@GLIBC_2.2.5").unwrap().name, "cfree");
        assert!(find_function("mallocz").is_none());
        assert!(find_function("mi_strdup").is_none());
    }

    #[test]
    fn argument_indices_follow_each_signature() {
        use AllocShape::*;
        let expect = [
            ("malloc", cookie(Malloc, 0, 0, 0)),
            ("calloc", cookie(Calloc, 0, 1, 0)),
            ("realloc", cookie(Realloc, 0, 1, 0)),
            ("reallocarray", cookie(ReallocArray, 0, 2, 1)),
            ("free", cookie(Free, 0, 0, 0)),
            ("posix_memalign", cookie(PosixMemalign, 0, 2, 0)),
            ("aligned_alloc", cookie(Malloc, 0, 1, 0)),
            ("memalign", cookie(Malloc, 0, 1, 0)),
            ("valloc", cookie(Malloc, 0, 0, 0)),
            ("mi_malloc_aligned", cookie(Malloc, 0, 0, 0)),
            ("mi_calloc_aligned_at", cookie(Calloc, 0, 1, 0)),
            ("mi_heap_calloc", cookie(Calloc, 0, 2, 1)),
            ("mi_heap_malloc_aligned", cookie(Malloc, 0, 1, 0)),
            ("mi_heap_realloc", cookie(Realloc, 1, 2, 0)),
            ("mi_heap_recalloc_aligned_at", cookie(ReallocArray, 1, 3, 2)),
            ("mi_theap_realloc", cookie(Realloc, 1, 2, 0)),
            ("mi_reallocn", cookie(ReallocArray, 0, 2, 1)),
            ("mi_expand", cookie(ExpandInPlace, 0, 1, 0)),
            ("mi_posix_memalign", cookie(PosixMemalign, 0, 2, 0)),
            ("mi_aligned_alloc", cookie(Malloc, 0, 1, 0)),
            ("mi_new_n", cookie(Calloc, 0, 1, 0)),
            ("mi_free_size_aligned", cookie(Free, 0, 0, 0)),
            ("mallocx", cookie(Malloc, 0, 0, 0)),
            ("je_mallocx", cookie(Malloc, 0, 0, 0)),
            ("_rjem_sdallocx", cookie(Free, 0, 0, 0)),
            ("je_posix_memalign", cookie(PosixMemalign, 0, 2, 0)),
            ("rallocx", cookie(Realloc, 0, 1, 0)),
            ("xallocx", cookie(ResizeInPlace, 0, 1, 0)),
            ("tc_memalign", cookie(Malloc, 0, 1, 0)),
            ("tc_posix_memalign", cookie(PosixMemalign, 0, 2, 0)),
            ("tc_deletearray_sized_aligned", cookie(Free, 0, 0, 0)),
            ("_ZnwmSt11align_val_tRKSt9nothrow_t", cookie(Malloc, 0, 0, 0)),
            ("_ZdaPvmSt11align_val_t", cookie(Free, 0, 0, 0)),
        ];
        for (name, cookie) in expect {
            assert_eq!(find_function(name).unwrap().cookie, cookie, "{name}");
        }
        assert_eq!(find_function("je_malloc").unwrap().family, Family::Jemalloc);
        assert_eq!(find_function("tc_newarray").unwrap().family, Family::Tcmalloc);
        assert_eq!(find_function("_ZdlPvm").unwrap().family, Family::Cxx);
        assert!(find_function("__libc_malloc").unwrap().internal);
        let throwing: BTreeSet<&str> = alloc_functions().filter(|f| f.throws).map(|f| f.name).collect();
        assert_eq!(
            throwing,
            BTreeSet::from([
                "_Znwm",
                "_Znam",
                "_ZnwmSt11align_val_t",
                "_ZnamSt11align_val_t",
                "mi_new",
                "mi_new_aligned",
                "mi_new_n",
                "mi_new_realloc",
                "mi_new_reallocn",
                "mi_heap_alloc_new",
                "mi_heap_alloc_new_n",
                "tc_new",
                "tc_newarray",
                "tc_new_aligned",
                "tc_newarray_aligned",
            ])
        );
    }

    #[test]
    fn finds_glibcs_allocator_once_per_function_at_its_code() {
        let libc = discover_in_file(Path::new(LIBC)).unwrap();
        for name in [
            "malloc",
            "calloc",
            "realloc",
            "reallocarray",
            "free",
            "posix_memalign",
            "aligned_alloc",
            "valloc",
            "pvalloc",
        ] {
            let found: Vec<_> = libc.entry_points.iter().filter(|e| e.name == name).collect();
            assert_eq!(found.len(), 1, "{name}: {:?}", names(&libc));
            let entry = found[0];
            assert_eq!(entry.family, Family::Glibc, "{name}");
            assert_eq!(entry.cookie, find_function(name).unwrap().cookie, "{name}");
            assert_points_at_code(Path::new(LIBC), entry);
        }
        // Aliases fold into the public name: one entry point each.
        assert!(libc.find("malloc").unwrap().aliases.contains(&"__libc_malloc".to_string()));
        let free = libc.find("free").unwrap();
        assert!(free.aliases.contains(&"cfree".to_string()) && free.aliases.contains(&"__libc_free".to_string()));
        assert!(libc.find("aligned_alloc").unwrap().aliases.contains(&"memalign".to_string()));
        for alias in ["memalign", "cfree", "__libc_malloc", "__libc_free", "__libc_calloc"] {
            assert!(libc.find(alias).is_none(), "{alias} is an alias, not an entry point of its own");
        }
        let mut addresses: Vec<u64> = libc.entry_points.iter().map(|e| e.vaddr).collect();
        addresses.dedup();
        assert_eq!(addresses.len(), libc.entry_points.len());
        assert_eq!(libc.find("posix_memalign").unwrap().cookie, cookie(AllocShape::PosixMemalign, 0, 2, 0));
        assert_eq!(libc.find("aligned_alloc").unwrap().cookie, cookie(AllocShape::Malloc, 0, 1, 0));
        assert!(libc.symbols.dynsym > 1000 && !libc.has_no_symbols());
    }

    #[test]
    fn finds_every_operator_new_and_delete_in_libstdcxx() {
        let libstdcxx = discover_in_file(Path::new(LIBSTDCXX)).unwrap();
        for function in CXX_FUNCTIONS {
            let entry = libstdcxx.find(function.name).unwrap_or_else(|| panic!("{} not found", function.name));
            assert_eq!(entry.family, Family::Cxx);
            assert_eq!(entry.cookie, function.cookie);
            let shape = if function.name.starts_with("_Zn") { AllocShape::Malloc } else { AllocShape::Free };
            assert_eq!(entry.cookie.shape, shape, "{}", function.name);
            assert_points_at_code(Path::new(LIBSTDCXX), entry);
        }
        assert!(libstdcxx.find("_Znwm").unwrap().throws && libstdcxx.find("_ZnamSt11align_val_t").unwrap().throws);
        assert!(!libstdcxx.find("_ZnwmRKSt9nothrow_t").unwrap().throws && !libstdcxx.find("_ZdlPv").unwrap().throws);
        // libstdc++ calls malloc and free; it does not define them.
        assert!(libstdcxx.find("malloc").is_none() && libstdcxx.find("free").is_none());
    }

    #[test]
    fn an_executables_own_allocator_folds_aliases_and_skips_what_is_not_code() {
        let dir = temp_dir("own");
        let binary = fake_mimalloc(&dir, "fake", "", &[]);
        let object = discover_in_file(&binary).unwrap();
        let mi_malloc = object.find("mi_malloc").unwrap();
        assert_eq!(mi_malloc.aliases, ["malloc"]);
        assert_eq!(object.find("mi_free").unwrap().aliases, ["free"]);
        assert_eq!(object.find("mi_new").unwrap().aliases, ["_Znwm", "_Znam"]);
        assert!(object.find("mi_new").unwrap().throws && !object.find("mi_malloc").unwrap().throws);
        for alias in ["malloc", "free", "_Znwm", "_Znam"] {
            assert!(object.find(alias).is_none(), "{alias}");
        }
        // A wrapper is an entry point of its own, of the allocator that defines it; hidden, local and
        // versioned functions count; the IFUNC, the data symbol and the import do not.
        assert_eq!(
            names(&object),
            ["mi_malloc", "mi_free", "mi_heap_calloc", "mi_new", "valloc", "mi_zalloc", "mi_mallocn", "mi_realloc"]
        );
        assert!(object.entry_points.iter().all(|e| e.family == Family::Mimalloc));
        assert_eq!(object.find("mi_heap_calloc").unwrap().cookie, cookie(AllocShape::Calloc, 0, 2, 1));
        assert_eq!(object.find("mi_realloc").unwrap().cookie, cookie(AllocShape::Realloc, 0, 1, 0));
        assert!(object.notes.iter().any(|n| n.starts_with("tc_malloc is an IFUNC")), "{:?}", object.notes);
        for entry in &object.entry_points {
            assert!(entry.vaddr >= 0x400000 && entry.file_offset < 0x100000, "{entry:?}");
            assert_eq!(entry.vaddr - entry.file_offset, 0x400000, "{entry:?}");
            assert_points_at_code(&binary, entry);
        }
        assert!(!object.is_stripped() && object.unnamed_allocators.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Builds the Rust + mimalloc fixture once (a few seconds once its crates are downloaded).
    fn rust_mimalloc_fixture() -> PathBuf {
        static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
        let mut built = BUILT.lock().unwrap();
        if let Some(path) = built.as_ref() {
            return path.clone();
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rust-mimalloc");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .args(["build", "--release", "--locked", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS"));
        let binary = dir.join("target/release/rust-mimalloc-fixture");
        *built = Some(binary.clone());
        binary
    }

    #[test]
    fn finds_the_mimalloc_functions_rusts_global_allocator_calls() {
        let binary = rust_mimalloc_fixture();
        let object = discover_in_file(&binary).unwrap();
        use AllocShape::*;
        for (name, expected) in [
            ("mi_malloc_aligned", cookie(Malloc, 0, 0, 0)),
            ("mi_zalloc_aligned", cookie(Malloc, 0, 0, 0)),
            ("mi_realloc_aligned", cookie(Realloc, 0, 1, 0)),
            ("mi_free", cookie(Free, 0, 0, 0)),
        ] {
            let entry = object.find(name).unwrap_or_else(|| panic!("{name} not in {:?}", names(&object)));
            assert_eq!((entry.family, entry.cookie), (Family::Mimalloc, expected), "{name}");
            assert_ne!(entry.vaddr, entry.file_offset, "rust-lld lays code out at an offset from its address");
            assert_points_at_code(&binary, entry);
        }
        // Rust's allocations do not go through libc's names in this binary: it defines none of them.
        assert!(object.find("malloc").is_none() && object.find("free").is_none());
    }

    #[test]
    fn symbols_from_an_unstripped_build_name_the_stripped_files_code() {
        let dir = temp_dir("symbols-from");
        let unstripped = fake_mimalloc(&dir, "server", "", &[]);
        let stripped = dir.join("server.stripped");
        strip_copy(&unstripped, &stripped);

        // Stripped, only what the executable exports is left, under the C names.
        let alone = discover_in_file(&stripped).unwrap();
        assert!(alone.is_stripped() && !alone.has_no_symbols());
        assert_eq!(names(&alone), ["malloc", "free", "valloc"]);
        assert!(alone.entry_points.iter().all(|e| e.family == Family::Libc), "{:?}", alone.entry_points);
        assert_eq!(alone.unnamed_allocators, [Family::Mimalloc]);

        let named = discover_with_symbols_from(&stripped, &unstripped).unwrap();
        let expected = discover_in_file(&unstripped).unwrap();
        assert_eq!(named.entry_points, expected.entry_points);
        assert_eq!(named.symbols_from.as_deref(), Some(unstripped.as_path()));
        assert_eq!(named.path, stripped);
        for entry in &named.entry_points {
            assert_points_at_code(&stripped, entry);
        }

        // Another build (other code, so another build id) is refused, naming both files on one line.
        let other = fake_mimalloc(&dir, "other", "used = 0;", &[]);
        let error = discover_with_symbols_from(&stripped, &other).unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error}");
        assert!(error.contains(&*stripped.to_string_lossy()) && error.contains(&*other.to_string_lossy()), "{error}");
        assert!(error.contains("build ids differ"), "{error}");

        // A stripped file given as the unstripped one has nothing to offer.
        let error = discover_with_symbols_from(&stripped, &stripped).unwrap_err().to_string();
        assert!(error.contains("is stripped too"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_build_ids_symbols_from_compares_the_code() {
        let dir = temp_dir("no-build-id");
        let unstripped = fake_mimalloc(&dir, "server", "", &["-Wl,--build-id=none"]);
        let stripped = dir.join("server.stripped");
        strip_copy(&unstripped, &stripped);
        assert!(Elf::parse(&fs::read(&stripped).unwrap(), &stripped).unwrap().build_id().is_none());
        let named = discover_with_symbols_from(&stripped, &unstripped).unwrap();
        assert_eq!(named.entry_points, discover_in_file(&unstripped).unwrap().entry_points);

        let other = fake_mimalloc(&dir, "other", "used = 0;", &["-Wl,--build-id=none"]);
        let error = discover_with_symbols_from(&stripped, &other).unwrap_err().to_string();
        assert!(error.contains(".text sections differ") && !error.contains('\n'), "{error}");
        assert!(error.contains(&*stripped.to_string_lossy()) && error.contains(&*other.to_string_lossy()), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn alloc_symbol_values_are_checked() {
        let symbol = parse_alloc_symbol("mi_malloc=0x1234560").unwrap();
        assert_eq!((symbol.function.name, symbol.vaddr), ("mi_malloc", 0x1234560));
        assert_eq!("je_mallocx=ABCDEF".parse::<AllocSymbol>().unwrap().vaddr, 0xabcdef);
        assert_eq!(parse_alloc_symbol(" free = 0X10 ").unwrap().function.name, "free");

        let unknown = parse_alloc_symbol("my_malloc=0x10").unwrap_err();
        assert!(unknown.contains("`my_malloc` is not an allocator function") && unknown.contains("nm --defined-only"));
        assert!(parse_alloc_symbol("mi_malloc").unwrap_err().contains("NAME=ADDR"));
        assert!(parse_alloc_symbol("=0x10").unwrap_err().contains("is not an allocator function"));
        for bad in ["mi_malloc=", "mi_malloc=0x", "mi_malloc=12g4", "mi_malloc=-1", "mi_malloc=0x1_000"] {
            assert!(parse_alloc_symbol(bad).unwrap_err().contains("is not a hexadecimal address"), "{bad}");
        }
        assert!(parse_alloc_symbol("mi_malloc=0x10000000000000000").is_err());
        assert!(parse_alloc_symbol("mi_malloc=0").unwrap_err().contains("not a function address"));
    }

    #[test]
    fn alloc_symbols_become_entry_points_of_the_stripped_executable() {
        let dir = temp_dir("alloc-symbol");
        let unstripped = fake_mimalloc(&dir, "server", "", &[]);
        let stripped = dir.join("server.stripped");
        strip_copy(&unstripped, &stripped);
        let expected = discover_in_file(&unstripped).unwrap();
        let mi_malloc = expected.find("mi_malloc").unwrap();
        let mi_heap_calloc = expected.find("mi_heap_calloc").unwrap();
        let symbols = [
            parse_alloc_symbol(&format!("mi_malloc={:#x}", mi_malloc.vaddr)).unwrap(),
            parse_alloc_symbol(&format!("mi_heap_calloc={:x}", mi_heap_calloc.vaddr)).unwrap(),
        ];
        let entries = entry_points_from_alloc_symbols(&stripped, &symbols).unwrap();
        assert_eq!(
            entries,
            [
                EntryPoint { aliases: Vec::new(), size: 0, ..mi_malloc.clone() },
                EntryPoint { aliases: Vec::new(), size: 0, ..mi_heap_calloc.clone() }
            ]
        );
        // banner[] is data, not code.
        let data = Elf::parse(&fs::read(&unstripped).unwrap(), &unstripped)
            .unwrap()
            .file
            .symbols()
            .find(|s| s.name() == Ok("banner"))
            .unwrap()
            .address();
        let error =
            entry_points_from_alloc_symbols(&stripped, &[parse_alloc_symbol(&format!("free={data:#x}")).unwrap()])
                .unwrap_err()
                .to_string();
        assert!(error.contains("no code of") && error.contains("server.stripped"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    fn maps_line(start: u64, perms: &str, offset: u64, inode: u64, path: &str) -> String {
        format!("{start:x}-{:x} {perms} {offset:08x} 08:02 {inode} {path}\n", start + 0x1000)
    }

    #[test]
    fn a_process_has_one_entry_per_executable_file_and_applies_options_to_its_main_executable() {
        let dir = temp_dir("process");
        let unstripped = fake_mimalloc(&dir, "server", "", &[]);
        let stripped = dir.join("server.stripped");
        strip_copy(&unstripped, &stripped);
        let exe = stripped.to_str().unwrap();
        let maps = [
            maps_line(0x400000, "r--p", 0, 11, exe),
            maps_line(0x401000, "r-xp", 0x1000, 11, exe),
            maps_line(0x402000, "r-xp", 0x1000, 11, exe), // the same file mapped twice: one object
            maps_line(0x403000, "rw-p", 0x2000, 11, exe),
            maps_line(0x7f00_0000_0000, "r-xp", 0x26000, 12, LIBC),
            maps_line(0x7f00_0010_0000, "r-xp", 0, 13, "/nonexistent/libgone.so"),
            maps_line(0x7f00_0020_0000, "r-xp", 0, 0, "[vdso]"),
            maps_line(0x7f00_0030_0000, "r-xs", 0, 7, "/memfd:jit (deleted)"),
            maps_line(0x7f00_0040_0000, "r-xp", 0, 14, "/tmp/replaced.so (deleted)"),
        ]
        .concat();
        let map = MemoryMap::parse(&maps);

        let process = discover_in_process(&map, &DiscoveryOptions::default()).unwrap();
        assert_eq!(process.main_executable.as_deref(), Some(stripped.as_path()));
        let paths: Vec<_> = process.objects.iter().map(|o| o.path.to_str().unwrap()).collect();
        assert_eq!(paths, [exe, LIBC]);
        let failures: Vec<_> = process.failures.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(failures, ["/nonexistent/libgone.so", "/tmp/replaced.so"]);
        assert!(process.main().unwrap().is_stripped());
        assert!(process.objects[1].find("malloc").is_some());

        // The summary says which families where, and warns that the executable hides mimalloc.
        let summary = summarize(&process);
        assert_eq!(summary.objects[0].families, [FamilyCount { family: Family::Libc, entry_points: 3 }]);
        assert_eq!(summary.objects[0].symbols, "exports only");
        assert!(summary.objects[0].main_executable);
        assert_eq!(summary.objects[1].families[0].family, Family::Glibc);
        let stripped_warning = summary.warnings.iter().find(|w| w.contains("is stripped")).unwrap();
        assert!(
            stripped_warning.contains("mimalloc") && stripped_warning.contains("--symbols-from"),
            "{stripped_warning}"
        );
        assert!(summary.warnings.iter().any(|w| w.contains("libgone.so")));
        assert!(summary.lines().iter().any(|l| l.starts_with("allocators in") && l.contains("glibc (")));
        assert!(serde_json::to_string(&summary).unwrap().contains(r#""family":"glibc""#));

        // --symbols-from and --alloc-symbol apply to the main executable.
        let expected = discover_in_file(&unstripped).unwrap();
        let options = DiscoveryOptions { symbols_from: Some(unstripped.clone()), ..Default::default() };
        let process = discover_in_process(&map, &options).unwrap();
        assert_eq!(process.main().unwrap().entry_points, expected.entry_points);
        assert!(summarize(&process).warnings.iter().all(|w| !w.contains("is stripped")));
        let other = fake_mimalloc(&dir, "other", "used = 0;", &[]);
        let options = DiscoveryOptions { symbols_from: Some(other), ..Default::default() };
        assert!(discover_in_process(&map, &options).unwrap_err().to_string().contains("build ids differ"));

        let mi_new = expected.find("mi_new").unwrap();
        let options = DiscoveryOptions {
            alloc_symbols: vec![parse_alloc_symbol(&format!("mi_new={:#x}", mi_new.vaddr)).unwrap()],
            ..Default::default()
        };
        let process = discover_in_process(&map, &options).unwrap();
        assert_eq!(names(process.main().unwrap()), ["malloc", "free", "mi_new", "valloc"]);
        assert_eq!(process.main().unwrap().find("mi_new").unwrap().file_offset, mi_new.file_offset);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stripped_file_takes_its_symbols_from_its_debug_file_under_another_root() {
        let dir = temp_dir("debug-file");
        let unstripped = fake_mimalloc(&dir, "server", "", &[]);
        let root = dir.join("root");
        let build_id = hex(Elf::parse(&fs::read(&unstripped).unwrap(), &unstripped).unwrap().build_id().unwrap());
        let debug = root.join(format!("usr/lib/debug/.build-id/{}/{}.debug", &build_id[..2], &build_id[2..]));
        fs::create_dir_all(debug.parent().unwrap()).unwrap();
        fs::create_dir_all(root.join("srv")).unwrap();
        run(Command::new("objcopy").arg("--only-keep-debug").arg(&unstripped).arg(&debug));
        strip_copy(&unstripped, &root.join("srv/server"));

        let map = MemoryMap::parse(&maps_line(0x401000, "r-xp", 0x1000, 11, "/srv/server"));
        let options = DiscoveryOptions { root: Some(root.clone()), ..Default::default() };
        let process = discover_in_process(&map, &options).unwrap();
        let main = process.main().unwrap();
        assert_eq!(
            (main.path.as_path(), main.attach_path.as_path()),
            (Path::new("/srv/server"), &*root.join("srv/server"))
        );
        assert_eq!(main.symbols_from.as_deref(), Some(debug.as_path()));
        assert_eq!(main.entry_points, discover_in_file(&unstripped).unwrap().entry_points);
        assert!(!main.is_stripped() && main.unnamed_allocators.is_empty());
        assert!(summarize(&process).warnings.is_empty());

        // Options for a main executable the target does not map are an error, not silently ignored.
        let options = DiscoveryOptions {
            root: Some(root),
            main_executable: Some("/srv/other".into()),
            symbols_from: Some(unstripped),
            ..Default::default()
        };
        let error = discover_in_process(&map, &options).unwrap_err().to_string();
        assert!(error.contains("/srv/other, which the target does not map"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symtab_that_only_repeats_the_exports_is_stripped() {
        // Like Bun's: linked with locals discarded, its .symtab lists exported functions only.
        let dir = temp_dir("exports-only");
        let binary = fake_mimalloc(&dir, "server", "", &["-DNO_SYMVER", "-Wl,--discard-all"]);
        let object = discover_in_file(&binary).unwrap();
        assert!(object.symbols.symtab > 0 && object.symbols.symtab_local == 0, "{:?}", object.symbols);
        assert!(object.is_stripped());
        // mi_mallocn was static: gone. The global mimalloc functions are still there, so nothing is unnamed.
        assert!(object.find("mi_mallocn").is_none() && object.find("mi_malloc").is_some());
        assert!(object.unnamed_allocators.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finds_glibc_in_this_very_process() {
        let map = MemoryMap::read(std::process::id()).unwrap();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let options = DiscoveryOptions { main_executable: Some(exe.clone()), ..Default::default() };
        let process = discover_in_process(&map, &options).unwrap();
        assert_eq!(process.main().unwrap().path, exe);
        let libc = process.objects.iter().find(|o| o.path.to_string_lossy().contains("libc.so.6")).unwrap();
        assert_eq!(libc.find("malloc").unwrap().family, Family::Glibc);
        let summary = summarize(&process);
        assert!(summary.warnings.iter().all(|w| !w.contains("no allocator entry point")), "{:?}", summary.warnings);
    }

    #[test]
    fn warns_when_no_allocator_is_found_at_all() {
        let dir = temp_dir("none");
        let source = dir.join("bare.c");
        fs::write(&source, "void _start(void) { for (;;) ; }\n").unwrap();
        let binary = dir.join("bare");
        run(Command::new("cc").args(["-O0", "-static", "-nostdlib", "-o"]).arg(&binary).arg(&source));
        strip_copy(&binary, &binary);
        let map = MemoryMap::parse(&maps_line(0x401000, "r-xp", 0x1000, 11, binary.to_str().unwrap()));
        let process = discover_in_process(&map, &DiscoveryOptions::default()).unwrap();
        assert!(process.objects[0].has_no_symbols());
        let summary = summarize(&process);
        assert_eq!(summary.entry_points, 0);
        assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
        let warning = &summary.warnings[0];
        assert!(warning.starts_with("no allocator entry point") && warning.contains(&*binary.to_string_lossy()));
        assert!(warning.contains("--symbols-from") && warning.contains("--alloc-symbol"), "{warning}");
        assert!(summary.lines()[0].contains("no allocator"));
        fs::remove_dir_all(dir).unwrap();
    }
}
