plugins { id("org.jetbrains.kotlin.jvm") }

kotlin { jvmToolchain(17) }

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The same vectors the Python, JS and Swift twins run.
    systemProperty("edgekit.vectors", rootProject.file("../edgekit/twin_vectors").absolutePath)
}
